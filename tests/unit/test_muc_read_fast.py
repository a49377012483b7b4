"""
gateway.xmpp.muc.read_message (one walk over a message's children) finds what the
helpers the MUC handler used to call one by one find: the handled mark,
text_of for body and subject, the first chat state, references.parse, origin_id —
on random and hostile messages, parsed by the same expat stream as the component's.
"""

from __future__ import annotations

import random

from twisted.words.xish import domish

from gateway.model import GatewayError
from gateway.xmpp import muc, references
from gateway.xmpp.stanzas import text_of

CHILDREN = [
    "<body>hello</body>", "<body xmlns='urn:xmpp:sid:0'>other ns</body>", "<body/>", "<body>second</body>",
    "<subject>topic</subject>", "<subject xmlns='urn:x'>t2</subject>",
    "<composing xmlns='http://jabber.org/protocol/chatstates'/>", "<gone xmlns='http://jabber.org/protocol/chatstates'/>",
    "<bogus xmlns='http://jabber.org/protocol/chatstates'/>", "<composing/>",
    "<origin-id xmlns='urn:xmpp:sid:0' id='o1'/>", "<origin-id xmlns='urn:xmpp:sid:0' id='o2'/>",
    "<origin-id xmlns='urn:xmpp:sid:0'/>", "<origin-id id='nons'/>", "<stanza-id xmlns='urn:xmpp:sid:0' id='s'/>",
    "<replace xmlns='urn:xmpp:message-correct:0' id='m1'/>", "<replace xmlns='urn:xmpp:message-correct:0'/>",
    "<reply xmlns='urn:xmpp:reply:0' to='r@x/n' id='m2'/>", "<reply id='nons'/>",
    "<reactions xmlns='urn:xmpp:reactions:0' id='m3'><reaction>\u2764</reaction></reactions>",
    "<fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'><body start='0' end='2'/></fallback>",
    "<handled/>", "<handled xmlns='urn:x'/>", "<x xmlns='http://jabber.org/protocol/muc#user'><invite/></x>",
    "<body xmlns='urn:xmpp:message-correct:0'>b</body>", "<active xmlns='urn:xmpp:reply:0'/>",
]


def _stanzas(n: int, rng: random.Random) -> list[domish.Element]:
    found: list[domish.Element] = []
    parser = domish.elementStream()
    parser.DocumentStartEvent = lambda root: None
    parser.ElementEvent = found.append
    parser.DocumentEndEvent = lambda: None
    parser.parse(b"<stream xmlns='jabber:component:accept'>")
    for i in range(n):
        kids = "".join(rng.choice(CHILDREN) + rng.choice(["", " text "]) for _ in range(rng.randint(0, 6)))
        parser.parse(f"<message to='#a%irc.x@c' from='u@x/r' id='i{i}'>{kids}</message>".encode())
    return found


def _reference(stanza: domish.Element):
    """What the handler read before, helper by helper."""
    handled = bool(stanza.__dict__.get("handled", False))    # the mark, never a <handled/> child
    body = text_of(stanza, None, "body")
    subject = text_of(stanza, None, "subject")
    chat_state = next((el.name for el in stanza.elements() if el.uri == muc.NS_CHATSTATES
                       and el.name in muc.CHAT_STATES), None)
    try:
        refs = references.parse(stanza, body)
    except GatewayError as e:
        refs = ("error", e.condition, e.text)
    return handled, body, subject, chat_state, refs, muc.origin_id(stanza)


def _fast(stanza: domish.Element):
    handled, body_el, subject_el, chat_state, referring, origin_el = muc.read_message(stanza)
    body = str(body_el) if body_el is not None else None
    if referring:
        try:
            refs = references.parse(stanza, body)
        except GatewayError as e:
            refs = ("error", e.condition, e.text)
    else:
        refs = references.References(body=body)
        assert muc._NO_REFS == references.References(), "the shared empty references were changed"
    return bool(handled), body, str(subject_el) if subject_el is not None else None, chat_state, refs, \
        muc._origin_id(origin_el)


def test_one_walk_reads_what_the_helpers_read():
    rng = random.Random(7)
    stanzas = _stanzas(5000, rng)
    assert len(stanzas) == 5000
    for stanza in stanzas:
        assert _fast(stanza) == _reference(stanza), stanza.toXml()


def test_a_handled_mark_set_by_another_handler_counts_and_a_false_one_does_not():
    stanza = _stanzas(1, random.Random(1))[0]
    stanza.handled = True
    assert muc.read_message(stanza)[0] is True
    stanza.handled = False
    stanza.addElement("handled")
    assert not muc.read_message(stanza)[0] and not getattr(stanza, "handled", False)


def test_a_handled_child_element_is_not_the_handled_mark():
    stanza = _stanzas(1, random.Random(2))[0]
    stanza.__dict__.pop("handled", None)
    stanza.addElement(("urn:example:hostile", "handled"))
    assert getattr(stanza, "handled", False)             # what the old read saw
    assert muc.read_message(stanza)[0] is False
