"""
A mail and its thread record are one transaction (issue 11): the 250 covers
both, a failure to store the mail leaves no thread record behind (one pointing
at a message nobody has), and a mail costs one commit, not two.

The real email component, bridge, outbox and SQLite registry (tests/unit/wire.py);
the failure is the database's own (a trigger refusing the queue insert, as a
full disk or a crash before the commit would leave it: nothing of the
transaction on disk).
"""

from __future__ import annotations

import sqlite3

import pytest
import pytest_twisted

from gateway.adapters.email import EmailAdapter
from gateway.options import validate_table
from tests.unit.wire import Wire

USER = "alice@example.org"
MAIL_DOMAIN = "mail.test"


def _mail(mid: str, references: str = "") -> bytes:
    refs = f"References: {references}\r\nIn-Reply-To: {references.split()[-1]}\r\n" if references else ""
    return (f"From: <bob@sender.test>\r\nTo: <alice@{MAIL_DOMAIN}>\r\nSubject: hello\r\n"
            f"Message-Id: {mid}\r\n{refs}\r\nLa de da.\r\n").encode()


def _options() -> dict:
    problems: list = []
    options = validate_table({"mail_domain": MAIL_DOMAIN, "smtp_listen": "", "sender_auth": "off"},
                             EmailAdapter.options, "", problems)
    assert not problems, problems
    return options


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "mail.sqlite")


@pytest_twisted.inlineCallbacks
def _wire(db):
    wire = Wire(db, options=_options(), adapter=EmailAdapter)
    yield wire.start()
    reply = yield wire.iq("set", "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>"
                                 "<field var='FORM_TYPE'><value>jabber:iq:register</value></field>"
                                 "<field var='alias'><value>alice</value></field></x></query>",
                          sender=USER + "/phone", iq_id="reg")
    assert reply.getAttribute("type") == "result", reply.toXml()
    wire.sent()
    return wire


def _rows(db: str, query: str) -> list[tuple]:
    """What is on disk, read on a connection of its own (not the registry's)."""
    con = sqlite3.connect(db)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


@pytest_twisted.inlineCallbacks
def test_a_mail_not_stored_leaves_no_thread_record(db):
    """
    The thread record was committed on its own before the mail: when storing
    the mail then failed (no 250; the sender retries), the record stayed, a
    thread pointing at a message nobody received.
    """
    wire = yield _wire(db)
    try:
        _rows(db, "CREATE TRIGGER refuse BEFORE INSERT ON queue BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        intake = wire.bridge.adapter.intake
        with pytest.raises(Exception):
            yield intake.receive(_mail("<m1@sender.test>"), [f"alice@{MAIL_DOMAIN}"], "bob@sender.test",
                                 digest="d1")
        assert _rows(db, "SELECT message_id FROM threads") == []
        assert _rows(db, "SELECT id FROM queue") == []
        assert _rows(db, "SELECT key FROM seen") == []
    finally:
        yield wire.quiet(0.2)              # the rows delivered and finished: nothing in flight at close
        yield wire.registry.settled()
        wire.stop()


@pytest_twisted.inlineCallbacks
def test_a_stored_mail_has_its_thread_record_on_disk_and_costs_one_commit(db):
    wire = yield _wire(db)
    try:
        intake = wire.bridge.adapter.intake
        # The first mail finds the registration (a query) and records its thread.
        yield intake.receive(_mail("<m1@sender.test>"), [f"alice@{MAIL_DOMAIN}"], "bob@sender.test", digest="d1")
        yield wire.registry.settled()
        # Every adbapi call (runQuery, runOperation) is a runInteraction: one transaction each.
        pool = wire.registry.pool
        calls = []
        original = pool.runInteraction

        def counted(*args, **kw):
            calls.append(args[0])
            return original(*args, **kw)
        pool.runInteraction = counted
        # The transactions asked for until the intake fires (the 250), not the row's delivery after.
        before_250 = yield intake.receive(_mail("<m2@sender.test>"), [f"alice@{MAIL_DOMAIN}"], "bob@sender.test",
                                          digest="d2").addCallback(lambda _: list(calls))
        # Fired: the 250 may go. Both rows are on disk, read by another connection.
        assert ("m2@sender.test", "<m2@sender.test>") in _rows(db, "SELECT thread, message_id FROM threads")
        assert len(before_250) == 1, before_250     # one transaction: the mail and its thread record
        del pool.runInteraction
    finally:
        yield wire.quiet(0.2)              # the rows delivered and finished: nothing in flight at close
        yield wire.registry.settled()
        wire.stop()


@pytest_twisted.inlineCallbacks
def test_a_reply_joins_the_thread_of_the_mail_it_answers(db):
    """The record written with the first mail is what the reply's thread lookup finds."""
    wire = yield _wire(db)
    try:
        intake = wire.bridge.adapter.intake
        rcpt = [f"alice@{MAIL_DOMAIN}"]
        yield intake.receive(_mail("<root@sender.test>"), rcpt, "bob@sender.test", digest="r1")
        yield intake.receive(_mail("<reply@sender.test>", "<root@sender.test>"), rcpt, "bob@sender.test",
                             digest="r2")
        yield intake.receive(_mail("<again@sender.test>", "<reply@sender.test>"), rcpt, "bob@sender.test",
                             digest="r3")
        assert sorted(_rows(db, "SELECT message_id, thread FROM threads")) == [
            ("<again@sender.test>", "root@sender.test"), ("<reply@sender.test>", "root@sender.test"),
            ("<root@sender.test>", "root@sender.test")]
    finally:
        yield wire.quiet(0.2)              # the rows delivered and finished: nothing in flight at close
        yield wire.registry.settled()
        wire.stop()
