"""Error answers: every RFC 6120 condition must serialise, or the refusal is never sent."""

import pytest
from twisted.words.xish import domish

from gateway.xmpp.stanzas import error_reply

#: RFC 6120 §8.3.3, all of them.
CONDITIONS = ["bad-request", "conflict", "feature-not-implemented", "forbidden", "gone", "internal-server-error",
              "item-not-found", "jid-malformed", "not-acceptable", "not-allowed", "not-authorized",
              "policy-violation", "recipient-unavailable", "redirect", "registration-required",
              "remote-server-not-found", "remote-server-timeout", "resource-constraint", "service-unavailable",
              "subscription-required", "undefined-condition", "unexpected-request"]


@pytest.mark.parametrize("condition", CONDITIONS)
def test_every_condition_serialises_with_a_type(condition):
    stanza = domish.Element((None, "message"))
    stanza["from"], stanza["to"], stanza["id"] = "u@example.org/r", "c@gw.example.org", "m1"
    xml = error_reply(stanza, condition, "why \x01").toXml()
    assert f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>" in xml
    assert "type='modify'" in xml if condition == "policy-violation" else "type='" in xml
    assert "\x01" not in xml


class _Stream:
    """What StanzaOutput writes on: the serialised stanzas, parsed back as the server would."""

    domain = "gw.example.org"
    connected = True

    def __init__(self):
        self.written: list[str] = []

    def send_serialized(self, xml: str, kind: str) -> None:
        self.written.append(xml)


def _parsed(xml: str) -> domish.Element:
    got = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = got.append
    stream.DocumentEndEvent = lambda: None
    stream.parse(b"<stream xmlns='jabber:component:accept'>" + xml.encode("utf-8"))
    assert len(got) == 1, xml
    return got[0]


HOSTILE = "quotes ' \" & <tag> ]]> \t tab\r\nnew line, bell \x07, NUL \x00, \ufffe, é ✓ 😀"


def test_inbound_messages_written_as_strings_carry_every_field_intact():
    """The string writer (the hot path) against every field, with what XML must escape or cannot carry."""
    from gateway.model import InboundMessage
    from gateway.xmpp.messages import StanzaOutput

    stream = _Stream()
    out = StanzaOutput(stream)
    message = InboundMessage(component=stream.domain, user="alice@example.org", sender="bob's & <co>",
                             body=HOSTILE, subject=HOSTILE, thread="t'1&", attachments=["https://x.example/a?b=1&c='2'"],
                             timestamp=1700000000.5, id="id'&<1>")
    out.send_message(message)
    el = _parsed(stream.written[0])
    clean = HOSTILE.replace("\x07", "").replace("\x00", "").replace("\ufffe", "")
    assert el.name == "message" and el["to"] == "alice@example.org" and el["type"] == "chat"
    assert el["from"] == out.contact_jid("bob's & <co>") and el["id"] == "id'&<1>"
    children = {(c.uri, c.name): c for c in el.elements()}
    # Carriage returns in character data become line feeds in any XML parser (XML 1.0 §2.11).
    assert str(children[("jabber:component:accept", "subject")]) == clean.replace("\r\n", "\n")
    body = str(children[("jabber:component:accept", "body")])
    assert body == clean.replace("\r\n", "\n") + "\nhttps://x.example/a?b=1&c='2'"
    assert str(children[("jabber:component:accept", "thread")]) == "t'1&"
    oob = children[("jabber:x:oob", "x")]
    assert str(next(oob.elements())) == "https://x.example/a?b=1&c='2'"
    assert ("http://jabber.org/protocol/chatstates", "active") in children
    assert children[("urn:xmpp:sid:0", "origin-id")]["id"] == "id'&<1>"
    delay = children[("urn:xmpp:delay", "delay")]
    assert delay["stamp"] == "2023-11-14T22:13:20.500000Z" and delay["from"] == stream.domain


def test_a_chat_state_alone_is_written_without_a_body():
    from gateway.model import InboundMessage
    from gateway.xmpp.messages import StanzaOutput

    stream = _Stream()
    StanzaOutput(stream).send_message(InboundMessage(component=stream.domain, user="alice@example.org",
                                                     sender="bob", chat_state="composing"))
    el = _parsed(stream.written[0])
    assert [(c.uri, c.name) for c in el.elements()] == [("http://jabber.org/protocol/chatstates", "composing"),
                                                         ("urn:xmpp:sid:0", "origin-id")]
