"""
Outbound mail: a proper MIME message (UTF-8, Date, Message-ID, threading headers)
from a neutral message. Nothing from XMPP reaches a header with a CR or LF in it:
header values are flattened to one line first, and the email package refuses
any that would still hold one.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
from email.headerregistry import Address
from email.message import EmailMessage

from gateway.model import OutboundMessage

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def one_line(text: str, limit: int = 200) -> str:
    """A header-safe value: control characters (CR, LF, NUL, ...) become spaces."""
    return _CONTROL.sub(" ", text or "").strip()[:limit]


def subject_for(message: OutboundMessage, thread_subject: str | None) -> str:
    if message.subject:
        return one_line(message.subject)
    if thread_subject:
        base = one_line(thread_subject)
        return base if base.lower().startswith("re:") else f"Re: {base}"
    first = one_line((message.body or "").strip().split("\n", 1)[0], 60)
    return first + ("…" if len((message.body or "").strip().split("\n", 1)[0]) > 60 else "") if first else ""


def message_id(message: OutboundMessage, mail_domain: str) -> str:
    """Stable across retries, so a resend after a crash is recognisably the same mail."""
    return f"<{message.id}@{mail_domain}>"


_TOKEN = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,64}$")


def _mime_type(content_type: str | None) -> tuple[str, str]:
    """(maintype, subtype) of a fetched file's type; anything not a plain type/subtype is octet-stream."""
    main, _, sub = (content_type or "").partition(";")[0].strip().lower().partition("/")
    if _TOKEN.match(main) and _TOKEN.match(sub) and main != "multipart" and main != "message":
        return main, sub
    return "application", "octet-stream"


def compose(message: OutboundMessage, sender: str, display_name: str, mail_domain: str,
            references: list[str], subject: str, files: list | None = None) -> tuple[bytes, str]:
    """
    The RFC 5322 message (LF line endings) to send, and its Message-ID.
    ``files`` (gateway.web.fetch.Fetched, one per attachment URL) become MIME
    parts; without them the attachment URLs are listed in the body.
    """
    # LF line endings: Twisted's SMTP client turns each LF into CRLF on the wire.
    mail = EmailMessage(policy=email.policy.default)
    local, _, domain = sender.partition("@")
    mail["From"] = Address(display_name=one_line(display_name, 80), username=local, domain=domain)
    r_local, _, r_domain = message.recipient.rpartition("@")
    mail["To"] = Address(username=r_local, domain=r_domain)
    if subject:
        mail["Subject"] = subject
    mail["Date"] = email.utils.formatdate(message.created_at, usegmt=True)
    mid = message_id(message, mail_domain)
    mail["Message-ID"] = mid
    if references:
        mail["In-Reply-To"] = references[-1]
        mail["References"] = " ".join(references[-20:])
    mail["Auto-Submitted"] = "no"
    body = message.body or ""
    if message.attachments and not files:
        body = (body + "\n\n" if body else "") + "\n".join(message.attachments)
    mail.set_content(body + ("\n" if not body.endswith("\n") else ""), charset="utf-8", cte="quoted-printable")
    for f in files or ():
        maintype, subtype = _mime_type(f.content_type)
        name = one_line(f.name, 100) or "attachment"
        mail.add_attachment(f.data, maintype=maintype, subtype=subtype, filename=name)
    return mail.as_bytes(), mid
