"""Small stanza helpers shared by the handlers."""

from __future__ import annotations

from twisted.words.protocols.jabber import error
from twisted.words.protocols.jabber.jid import InvalidFormat, JID, internJID
from twisted.words.xish import domish

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def parse_jid(value: str | None) -> JID | None:
    if not value:
        return None
    try:
        return internJID(value)
    except (InvalidFormat, ValueError, UnicodeError):
        return None


def error_reply(stanza: domish.Element, condition: str, text: str | None = None,
                error_type: str | None = None) -> domish.Element:
    """The error answer to ``stanza``, addressed back to its sender from where it was sent."""
    reply = domish.Element((None, stanza.name))
    reply["type"] = "error"
    if stanza.getAttribute("id"):
        reply["id"] = stanza["id"]
    reply["from"] = stanza["to"]
    reply["to"] = stanza["from"]
    exc = error.StanzaError(condition, error_type, text)
    reply.addChild(exc.getElement())
    return reply


def child(element: domish.Element, uri: str, name: str) -> domish.Element | None:
    for c in element.elements(uri, name):
        return c
    return None


def text_of(element: domish.Element, uri: str | None, name: str) -> str | None:
    for c in element.elements():
        if c.name == name and (uri is None or c.uri == uri):
            return str(c)
    return None
