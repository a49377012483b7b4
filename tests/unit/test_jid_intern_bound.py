"""
Twisted interns every JID string it parses (``jid.internJID``) in a module dict
that is never emptied, and the gateway parses the ``from`` and ``to`` of every
stanza through it (ours in ``parse_jid``, wokkel's in every disco or other
request it reads). A client writing to a new address per stanza, or a peer
inventing resources, grew that dict without bound. The table is bounded now.
"""

from __future__ import annotations

import tracemalloc

import pytest

from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish

import gateway.xmpp  # noqa: F401  (installs the bound)
from gateway.xmpp import jids
from gateway.xmpp.stanzas import parse_jid
from wokkel import generic


def _table() -> dict:
    return vars(jid)["__internJIDs"]


@pytest.fixture(autouse=True)
def small_limit(monkeypatch):
    """The default bound, shown on a smaller one so the test stays quick (stringprep is slow)."""
    assert jids.INTERN_LIMIT <= 4096
    monkeypatch.setattr(jids, "INTERN_LIMIT", 300)


def test_distinct_jids_do_not_grow_the_intern_table_without_bound():
    for i in range(3 * jids.INTERN_LIMIT):
        parse_jid(f"user{i}@sms.example/{'r' * 200}{i}")
    assert len(_table()) <= jids.INTERN_LIMIT


def test_wokkels_requests_go_through_the_same_bound():
    for i in range(2 * jids.INTERN_LIMIT):
        iq = domish.Element((None, "iq"))
        iq["from"], iq["to"], iq["type"] = f"a{i}@example.org/x", f"+1415555{i:04d}@sms.example", "get"
        iq.addElement(("http://jabber.org/protocol/disco#info", "query"))
        generic.Request.fromElement(iq)
    assert len(_table()) <= jids.INTERN_LIMIT


def test_memory_stays_flat_under_a_flood_of_new_jids():
    for i in range(jids.INTERN_LIMIT):                  # fill once: the table's own size is the bound
        parse_jid(f"warm{i}@example.org/{'w' * 500}")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(4 * jids.INTERN_LIMIT):
            parse_jid(f"flood{i}@example.org/{'f' * 500}")
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # the table may hold at most INTERN_LIMIT of these (~1.5 KiB each) at any moment, never 4x that
    assert grown < jids.INTERN_LIMIT * 2048, grown


def test_interned_jids_are_still_shared_and_right():
    a = parse_jid("Alice@Example.ORG/Phone")
    assert a is parse_jid("Alice@Example.ORG/Phone")
    assert (a.user, a.host, a.resource) == ("alice", "example.org", "Phone")
    assert parse_jid("a@b@c") is None and parse_jid("") is None
