"""
References between messages in memory: XEP-0308/0461/0444 read from stanzas
(bounds, fallback stripping), the short-edit form, and the bounded memory with
its refusal of corrections of someone else's message.
"""

from __future__ import annotations

import pytest
from twisted.words.xish import domish
from zope.interface import implementer

from gateway import fallback
from gateway.bridge import conversations
from gateway.bridge.conversations import Conversations, Record
from gateway.interfaces import IReactions
from gateway.model import GatewayError, InboundMessage, OutboundMessage, Registration
from gateway.xmpp import references
from gateway.xmpp.references import NS_CORRECT, NS_FALLBACK, NS_REACTIONS, NS_REPLY, parse


def stanza(body: str | None, *children) -> domish.Element:
    el = domish.Element((None, "message"))
    if body is not None:
        el.addElement("body", content=body)
    for child in children:
        el.addChild(child)
    return el


def element(uri: str, name: str, **attrs) -> domish.Element:
    el = domish.Element((uri, name))
    for k, v in attrs.items():
        el[k] = v
    return el


def test_reply_fallback_is_taken_out_of_the_body_and_kept_as_the_quote():
    quote = "> Bob wrote:\n> where is it?\n"
    fb = element(NS_FALLBACK, "fallback", **{"for": NS_REPLY})
    fb.addChild(element(NS_FALLBACK, "body", start="0", end=str(len(quote))))
    refs = parse(stanza(quote + "in room 4", element(NS_REPLY, "reply", id="m1", to="b@x"), fb), quote + "in room 4")
    assert (refs.reply_to, refs.body, refs.quoted) == ("m1", "in room 4", "Bob wrote: where is it?")


def test_a_fallback_for_another_feature_or_none_leaves_the_body():
    fb = element(NS_FALLBACK, "fallback", **{"for": "urn:xmpp:other"})
    refs = parse(stanza("> q\nanswer", element(NS_REPLY, "reply", id="m1"), fb), "> q\nanswer")
    assert refs.body == "> q\nanswer" and refs.quoted is None


@pytest.mark.parametrize("start,end", [("0", "999"), ("5", "2"), ("-1", "3"), ("x", "3")])
def test_a_fallback_range_outside_the_body_is_bad_request(start, end):
    fb = element(NS_FALLBACK, "fallback", **{"for": NS_REPLY})
    fb.addChild(element(NS_FALLBACK, "body", start=start, end=end))
    with pytest.raises(GatewayError) as e:
        parse(stanza("short", element(NS_REPLY, "reply", id="m1"), fb), "short")
    assert e.value.condition == "bad-request"


def test_ids_and_reactions_are_bounded():
    with pytest.raises(GatewayError):
        parse(stanza("x", element(NS_CORRECT, "replace", id="i" * 257)), "x")
    with pytest.raises(GatewayError):
        parse(stanza("x", element(NS_CORRECT, "replace")), "x")
    many = element(NS_REACTIONS, "reactions", id="m1")
    for i in range(21):
        many.addElement("reaction", content=f"r{i}")
    with pytest.raises(GatewayError) as e:
        parse(stanza(None, many), None)
    assert e.value.condition == "policy-violation"
    long = element(NS_REACTIONS, "reactions", id="m1")
    long.addElement("reaction", content="x" * 33)
    with pytest.raises(GatewayError):
        parse(stanza(None, long), None)
    fine = element(NS_REACTIONS, "reactions", id="m1")
    for emoji in ("👍", "👍", " ", "🎉"):
        fine.addElement("reaction", content=emoji)
    assert parse(stanza(None, fine), None).reactions == ["👍", "🎉"]


def test_inbound_elements_are_escaped():
    xml = references.inbound_xml("a'b", "r@x/n<", "c&d", ["<3"])
    assert "id='a&apos;b'" in xml or 'id="a\'b"' in xml
    assert "&lt;3" in xml and "<3<" not in xml


@pytest.mark.parametrize("old,new,edit", [
    ("the quick brown fox", "the quick red fox", "s/brown/red/"),
    ("the quick brown fox", "the quick red dog", "s/brown fox/red dog/"),   # one run of words
    ("the quick brown fox jumps", "the slow brown fox leaps", None),     # two changes
    ("the quick brown fox", "the quick brown fox jumps", None),      # an addition
    ("one two", "one three", "s/two/three/"),
    ("it is a/b", "it is a/c", None),                                # "/" would break s///
    ("the the end", "the a end", None),                              # s/// changes the first match only
    (None, "anything", None),
])
def test_short_edits(old, new, edit):
    assert fallback.short_edit(old, new) == edit


@implementer(IReactions)
class Reacting:
    pass


class Plain:
    pass


def out(**kw) -> OutboundMessage:
    return OutboundMessage(component="c", user="u@x", recipient="bob", **kw)


def test_a_correction_of_someone_elses_message_is_refused_and_of_ones_own_carries_the_original():
    memory = Conversations(Plain())
    memory.inbound(InboundMessage(component="c", user="u@x", sender="bob", body="theirs", id="in1", foreign_id="F1"))
    with pytest.raises(GatewayError) as e:
        memory.prepare(out(body="mine now", correction_of="in1"), None)
    assert e.value.condition == "forbidden"
    memory.prepare(out(body="first", xmpp_id="x1"), None)
    memory.sent(out(body="first", xmpp_id="x1"), "F2")
    fixed = memory.prepare(out(body="second", correction_of="x1"), None)
    assert (fixed.body, fixed.ref, fixed.ref_body) == ("Correction: second", "F2", "first")
    ignored = Registration("c", "u@x", settings={conversations.SETTING: "ignore"})
    assert memory.prepare(out(body="third", correction_of="x1"), ignored) is None


def test_reactions_add_only_new_ones_and_the_fallback_quotes():
    memory = Conversations(Plain())
    memory.inbound(InboundMessage(component="c", user="u@x", sender="bob", body="lunch?", id="in1"))
    first = memory.prepare(out(reaction_to="in1", reactions=["❤"]), None)
    assert first.body == "Reacted ❤ to “lunch?”"
    assert memory.prepare(out(reaction_to="in1", reactions=["❤"]), None) is None
    assert memory.prepare(out(reaction_to="in1", reactions=[]), None) is None
    native = Conversations(Reacting())
    native.inbound(InboundMessage(component="c", user="u@x", sender="bob", body="lunch?", id="in1"))
    kept = native.prepare(out(reaction_to="in1", reactions=["❤", "🎉"]), None)
    assert kept.body is None and kept.reactions == ["❤", "🎉"]


def test_inbound_references_resolve_to_the_xmpp_id():
    memory = Conversations(Plain())
    memory.inbound(InboundMessage(component="c", user="u@x", sender="bob", body="q", id="in1", foreign_id="F1"))
    answer = InboundMessage(component="c", user="u@x", sender="bob", body="a", ref="F1")
    memory.inbound(answer)
    assert (answer.reply_to, answer.ref_author) == ("in1", "bob")
    unknown = InboundMessage(component="c", user="u@x", sender="bob", ref="nope", reactions=["🎉"])
    memory.inbound(unknown)
    assert unknown.reaction_to is None and unknown.body == "Reacted 🎉"


def test_memory_is_bounded_per_conversation_and_in_all(monkeypatch):
    monkeypatch.setattr(conversations, "MESSAGES", 3)
    monkeypatch.setattr(conversations, "CONVERSATIONS", 2)
    memory = Conversations(Plain())
    for i in range(5):
        memory.remember("u@x", "bob", f"m{i}", Record(own=True, body="x" * 5000, ref=f"F{i}"))
    assert memory.find("u@x", "bob", "m0") is None and memory.by_ref("u@x", "bob", "F1") is None
    assert len(memory.find("u@x", "bob", "m4").body) == conversations.BODY_LIMIT
    memory.remember("u@x", "carol", "c", Record(own=True))
    memory.remember("u@x", "dave", "d", Record(own=True))
    assert memory.find("u@x", "bob", "m4") is None and memory.by_ref("u@x", "bob", "F4") is None


def test_memory_has_a_total_bound_and_long_ids_are_not_kept(monkeypatch):
    monkeypatch.setattr(conversations, "TOTAL", 5)
    memory = Conversations(Plain())
    for who in ("a", "b", "c"):
        for i in range(3):
            memory.remember("u@x", who, f"{who}{i}", Record(own=True))
    assert memory._count == 5 and memory.find("u@x", "a", "a2") is None and memory.find("u@x", "c", "c2")
    memory.remember("u@x", "d", "i" * 300, Record(own=True))
    assert memory.find("u@x", "d", "i" * 300) is None


def test_a_long_original_is_quoted_but_not_diffed():
    memory = Conversations(Plain())
    long = "word " * 200
    memory.prepare(out(body=long, xmpp_id="x1"), None)
    fixed = memory.prepare(out(body=long + "more", correction_of="x1"), None)
    assert fixed.ref_body is None


# -- on the stream: malformed references get the right stanza error, nothing is sent -----------------

import os  # noqa: E402

import pytest_twisted  # noqa: E402

from tests.unit.wire import DOMAIN, Wire, error_of, find  # noqa: E402


@pytest.fixture
def wire(tmp_path):
    w = pytest_twisted.blockon(Wire(os.path.join(tmp_path, "reg.sqlite")).start())
    yield w
    w.stop()


@pytest_twisted.inlineCallbacks
def test_malformed_references_are_refused_on_the_stream(wire):
    yield wire.register()
    wire.sent()
    many = "".join(f"<reaction>r{i}</reaction>" for i in range(21))
    for mid, extra, condition in (
            ("noid", f"<replace xmlns='{NS_CORRECT}'/>", "bad-request"),
            ("many", f"<reactions xmlns='{NS_REACTIONS}' id='x'>{many}</reactions>", "policy-violation"),
            ("range", f"<reply xmlns='{NS_REPLY}' id='x'/><fallback xmlns='{NS_FALLBACK}' for='{NS_REPLY}'>"
                      "<body start='0' end='99'/></fallback>", "bad-request")):
        wire.feed(f"<message from='alice@example.org/phone' to='bob@{DOMAIN}' id='{mid}' type='chat'>"
                  f"<body>x</body>{extra}</message>")
        err = yield wire.wait(lambda el, mid=mid: el.getAttribute("id") == mid)
        assert err["type"] == "error" and error_of(err)[0] == condition
    # A well-formed reply reaches the echo network with the quote as its first line (the core's fallback).
    wire.feed(f"<message from='alice@example.org/phone' to='bob@{DOMAIN}' id='ok' type='chat'>"
              f"<body>&gt; q\nfine</body><reply xmlns='{NS_REPLY}' id='x'/>"
              f"<fallback xmlns='{NS_FALLBACK}' for='{NS_REPLY}'><body start='0' end='4'/></fallback></message>")
    echo = yield wire.wait(lambda el: el.name == "message" and find(el, "body") is not None)
    assert str(find(echo, "body")) == "> q\nfine"


def test_dropping_an_old_message_keeps_a_newer_ones_reference_to_the_same_ref(monkeypatch):
    """
    A network reference can be reused (an IRC server's msgid after a restart, an
    email Message-ID sent twice): the newer message owns it. Forgetting the older
    message must not take the newer one's reference with it.
    """
    monkeypatch.setattr(conversations, "MESSAGES", 2)
    memory = Conversations(Plain())
    memory.remember("u@x", "c", "old", Record(own=False, body="first", ref="R"))
    memory.remember("u@x", "c", "new", Record(own=False, body="second", ref="R"))
    memory.remember("u@x", "c", "third", Record(own=False, body="third"))      # "old" goes
    assert memory.find("u@x", "c", "old") is None
    found = memory.by_ref("u@x", "c", "R")
    assert found is not None and found[0] == "new"
    monkeypatch.setattr(conversations, "TOTAL", 2)
    memory.remember("u@x", "d", "x1", Record(own=False, body="x", ref="S"))
    memory.remember("u@x", "d", "x2", Record(own=False, body="y", ref="S"))   # the total bound drops "new"...
    assert memory.by_ref("u@x", "d", "S")[0] == "x2"
