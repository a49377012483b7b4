"""Small stanza helpers shared by the handlers."""

from __future__ import annotations

import re

from twisted.words.protocols.jabber import error
from twisted.words.protocols.jabber.jid import InvalidFormat, JID, internJID
from twisted.words.xish import domish

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

#: Characters XML 1.0 forbids. Foreign networks send them (IRC's BEL and CTCP
#: delimiters, stray bytes in mail); one in a stanza would make the server end the
#: component stream, so they are dropped wherever foreign text enters a stanza.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str | None) -> str | None:
    return _NOT_XML.sub("", text) if text else text


_ATTR_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;",
                               "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})


def quote_attr(value: str) -> str:
    """
    An attribute value in single quotes, for stanzas written as strings. Most
    values (JIDs, ids) need no escape at all, which the checks find faster
    than saxutils.quoteattr's replacements (a few per stanza on the hot path).
    """
    if ("&" in value or "<" in value or ">" in value or "'" in value or '"' in value or "\n" in value
            or "\r" in value or "\t" in value):
        return "'" + value.translate(_ATTR_ESCAPES) + "'"
    return "'" + value + "'"


def escape_text(text: str) -> str:
    """Character data for stanzas written as strings (most text has nothing to escape: no replace then)."""
    if "&" in text or "<" in text or ">" in text:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text


def parse_jid(value: str | None) -> JID | None:
    if not value:
        return None
    try:
        return internJID(value)
    except (InvalidFormat, ValueError, UnicodeError):
        return None


#: RFC 6120 §8.3.3 conditions Twisted's table lacks (or has without a type):
#: without one Twisted cannot serialise the error, and the refusal is never sent.
_EXTRA_ERROR_TYPES = {"policy-violation": "modify"}


def default_error_type(condition: str) -> str:
    known = error.STANZA_CONDITIONS.get(condition)
    if known is not None and known.get("type"):
        return known["type"]
    return _EXTRA_ERROR_TYPES.get(condition, "cancel")


def error_reply(stanza: domish.Element, condition: str, text: str | None = None,
                error_type: str | None = None) -> domish.Element:
    """The error answer to ``stanza``, addressed back to its sender from where it was sent."""
    reply = domish.Element((None, stanza.name))
    reply["type"] = "error"
    if stanza.getAttribute("id"):
        reply["id"] = stanza["id"]
    reply["from"] = stanza["to"]
    reply["to"] = stanza["from"]
    if error_type is None:
        error_type = default_error_type(condition)
    exc = error.StanzaError(condition, error_type, xml_safe(text))
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
