"""
Hostile mail against the real intake (gateway/adapters/email MailIntake), the
bridge replaced by a recorder as in tests/unit/test_irc_session.py: each test
failed before its fix (adversary review).
"""

from __future__ import annotations

from email.message import EmailMessage

import pytest_twisted
from twisted.internet import defer

from gateway.adapters.email import MailIntake
from gateway.model import Registration


class Context:
    component = "mail.example.org"

    def __init__(self):
        self.offered = []
        self.delivered = []

    def registration_by_foreign_id(self, address):
        return defer.succeed(Registration(component=self.component, jid="alice@example.org", foreign_id=address))

    def offer_file(self, user, data, name, content_type):
        self.offered.append(name)
        return defer.succeed(f"https://files.example.org/{len(self.offered)}")

    def thread_of(self, user, ids):
        return defer.succeed(None)

    def add_to_thread(self, user, thread, message_id, subject=None):
        return defer.succeed(None)

    def deliver_all(self, messages, threads=()):
        self.delivered.extend(messages)
        return defer.succeed([True] * len(messages))


class Adapter:
    sender_auth = None

    def __init__(self, context):
        self.context = context


@pytest_twisted.inlineCallbacks
def test_a_mail_of_thousands_of_tiny_parts_is_not_thousands_of_uploads():
    """
    Every attachment of a mail was uploaded (one XEP-0363 slot and PUT, or one
    file written here, each) and linked in one message, with no bound: a mail
    of a few MB in 100-byte parts made thousands of uploads to the user's
    server while the SMTP client waited, and a message of thousands of links.
    Past MAX_INBOUND_ATTACHMENTS the parts are counted in the text instead.
    """
    from gateway.adapters import email as mail_adapter

    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "eve@evil.example", "alice@mail.example.org", "parts"
    mail["Message-ID"] = "<m1@evil.example>"
    mail.set_content("look")
    for n in range(300):
        mail.add_attachment(b"x" * 100, maintype="application", subtype="octet-stream", filename=f"p{n}.bin")
    context = Context()
    yield MailIntake(Adapter(context)).receive(bytes(mail), ["alice@mail.example.org"], "eve@evil.example")
    limit = getattr(mail_adapter, "MAX_INBOUND_ATTACHMENTS", 20)
    assert len(context.offered) <= limit
    (message,) = context.delivered
    assert len(message.attachments) <= limit
    assert f"{300 - len(message.attachments)} more attachments" in message.body


class Fetching:
    """A context whose files are as large as the test says, honouring the cap it is given."""

    def __init__(self, sizes):
        self.sizes = dict(sizes)
        self.caps = []

    def fetch(self, url, user=None, max_size=None):
        from gateway.web.fetch import Fetched, FileTooLarge
        self.caps.append(max_size)
        size = self.sizes[url]
        if max_size is not None and size > max_size:
            return defer.fail(FileTooLarge(f"{url} is larger than {max_size} bytes"))
        return defer.succeed(Fetched(url=url, data=b"x" * size, content_type="application/octet-stream",
                                     name=url))


@pytest_twisted.inlineCallbacks
def test_a_mails_files_together_stay_within_its_size():
    """
    Each file of an outgoing mail was fetched up to the operator's per-file cap
    (10 MiB), ten of them per mail: 100 MiB held for one mail. Together they
    now stay within the mail's max_size, each fetch capped by what is left.
    """
    import pytest
    from gateway.adapters.email import fetch_all
    from gateway.model import GatewayError

    context = Fetching({"a": 600, "b": 300, "c": 200})
    got = yield fetch_all(context, "alice@example.org", ["a", "b"], 1000)
    assert [len(f.data) for f in got] == [600, 300] and context.caps == [1000, 400]
    with pytest.raises(GatewayError):
        yield fetch_all(context, "alice@example.org", ["a", "b", "c"], 1000)


class Held:
    """A context whose fetches wait until the test lets them go, counting those in flight."""

    component = "mail.example.org"
    clock = None

    def __init__(self):
        self.waiting = []

    def counter(self, jid, name, period):
        return defer.succeed(0)

    def thread_of(self, user, ids):
        return defer.succeed(None)

    def thread_messages(self, user, thread):
        return defer.succeed([])

    def fetch(self, url, user=None, max_size=None):
        d = defer.Deferred()
        self.waiting.append(d)
        return d


def test_mails_with_files_are_put_together_a_few_at_once():
    """Ten users' mails with a file each: only ASSEMBLING of them fetch and hold files at once."""
    from twisted.internet import task
    from gateway.adapters.email import ASSEMBLING, EmailAdapter
    from gateway.model import OutboundMessage

    context = Held()
    context.clock = task.Clock()
    options = {o.key: o.default for o in EmailAdapter.options}
    options.update(mail_domain="mail.example.org", sender_auth="off")
    adapter = EmailAdapter(options, context)
    registration = Registration(component=context.component, jid="alice@example.org",
                                foreign_id="alice@mail.example.org")
    sends = [adapter.send(OutboundMessage(component=context.component, user="alice@example.org",
                                          recipient="bob@example.net", body=None,
                                          attachments=[f"https://files.example.org/{n}"]), registration)
             for n in range(10)]
    assert len(context.waiting) == ASSEMBLING
    for d in sends:
        d.addErrback(lambda f: None)           # the test ends with them pending or cancelled
