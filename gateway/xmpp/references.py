"""
Messages that refer to other messages: XEP-0308 corrections (``<replace id>``),
XEP-0461 replies (``<reply to id>``, with the XEP-0428 fallback quote taken out
of the body) and XEP-0444 reactions (``<reactions id><reaction/>``), read in
one place for chats and rooms; and the same elements written for messages from
the network. The neutral model gets ids and texts only (gateway.model).

Everything read here is bounded: ids of at most MAX_ID characters, at most
MAX_REACTIONS reactions of at most MAX_REACTION characters each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.words.xish import domish

from gateway.model import GatewayError
from gateway.xmpp.stanzas import escape_text, quote_attr, xml_safe

NS_CORRECT = "urn:xmpp:message-correct:0"
NS_REPLY = "urn:xmpp:reply:0"
NS_REACTIONS = "urn:xmpp:reactions:0"
NS_FALLBACK = "urn:xmpp:fallback:0"

MAX_ID = 256
MAX_REACTIONS = 20
MAX_REACTION = 32


@dataclass
class References:
    correction_of: str | None = None
    reply_to: str | None = None
    reaction_to: str | None = None
    reactions: list[str] = field(default_factory=list)
    #: The body without the fallback parts (None when nothing is left of it).
    body: str | None = None
    #: The text the fallback quoted (the message replied to), "> " taken off.
    quoted: str | None = None
    #: XEP-0461 ``to``: the JID of the author of the message replied to, as the client says.
    reply_jid: str | None = None

    @property
    def any(self) -> bool:
        return bool(self.correction_of or self.reply_to or self.reaction_to)


def _id(element: domish.Element, what: str) -> str:
    value = element.getAttribute("id")
    if not value or len(value) > MAX_ID or xml_safe(value) != value:
        raise GatewayError(f"the {what} needs the id of the message it refers to (at most {MAX_ID} characters)",
                           "bad-request", "modify")
    return value


def _fallback_ranges(stanza: domish.Element, body: str, namespaces: tuple[str, ...]) -> list[tuple[int, int]]:
    """XEP-0428: the parts of ``body`` (code point ranges) that are only there for clients without the feature."""
    ranges = []
    for fb in stanza.elements(NS_FALLBACK, "fallback"):
        if fb.getAttribute("for") not in namespaces:
            continue
        parts = list(fb.elements(NS_FALLBACK, "body"))
        if not parts:
            ranges.append((0, len(body)))               # the whole body is the fallback
        for part in parts[:10]:
            try:
                start, end = int(part.getAttribute("start", "0")), int(part.getAttribute("end", str(len(body))))
            except ValueError:
                raise GatewayError("a fallback range must be whole numbers", "bad-request", "modify")
            if not 0 <= start <= end <= len(body):
                raise GatewayError("a fallback range lies outside the body", "bad-request", "modify")
            ranges.append((start, end))
    return ranges


def _unquote(text: str) -> str | None:
    lines = []
    for line in text.splitlines():
        line = line.strip()
        while line.startswith(">"):
            line = line[1:].lstrip()
        if line:
            lines.append(line)
    return " ".join(lines) or None


def parse(stanza: domish.Element, body: str | None) -> References:
    """The references of a message from a user; GatewayError (bad-request) for malformed ones."""
    refs = References(body=body)
    for el in stanza.elements():
        if el.uri == NS_CORRECT and el.name == "replace":
            refs.correction_of = _id(el, "correction")
        elif el.uri == NS_REPLY and el.name == "reply":
            refs.reply_to = _id(el, "reply")
            to = el.getAttribute("to")
            refs.reply_jid = to if to and len(to) <= 3071 else None
        elif el.uri == NS_REACTIONS and el.name == "reactions":
            refs.reaction_to = _id(el, "reaction")
            for reaction in el.elements(NS_REACTIONS, "reaction"):
                text = str(reaction).strip()
                if not text:
                    continue
                if len(text) > MAX_REACTION or xml_safe(text) != text or any(c in text for c in "\r\n"):
                    raise GatewayError(f"a reaction is an emoji or a short text (at most {MAX_REACTION} "
                                       "characters)", "bad-request", "modify")
                if text not in refs.reactions:
                    refs.reactions.append(text)
                if len(refs.reactions) > MAX_REACTIONS:
                    raise GatewayError(f"at most {MAX_REACTIONS} reactions to one message", "policy-violation",
                                       "modify")
    if body is not None and (refs.reply_to or refs.reaction_to):
        namespaces = tuple(ns for ns, on in ((NS_REPLY, refs.reply_to), (NS_REACTIONS, refs.reaction_to)) if on)
        ranges = sorted(_fallback_ranges(stanza, body, namespaces))
        if ranges:
            kept, quoted, at = [], [], 0
            for start, end in ranges:
                start = max(start, at)
                kept.append(body[at:start])
                quoted.append(body[start:end] if end > start else "")
                at = max(at, end)
            kept.append(body[at:])
            rest = "".join(kept).strip("\n")
            refs.body = rest if rest.strip() else None
            if refs.reply_to:
                refs.quoted = _unquote("\n".join(quoted))
    return refs


def inbound_xml(reply_to: str | None, reply_jid: str | None, reaction_to: str | None, reactions: list[str]) -> str:
    """The XEP-0461 and XEP-0444 elements of a message from the network, serialised."""
    parts = []
    if reply_to:
        to = f" to={quote_attr(reply_jid)}" if reply_jid else ""
        parts.append(f"<reply xmlns='{NS_REPLY}'{to} id={quote_attr(xml_safe(reply_to))}/>")
    if reaction_to:
        inner = "".join(f"<reaction>{escape_text(xml_safe(r))}</reaction>" for r in reactions)
        parts.append(f"<reactions xmlns='{NS_REACTIONS}' id={quote_attr(xml_safe(reaction_to))}>{inner}</reactions>")
    return "".join(parts)


__all__ = ["References", "parse", "inbound_xml", "NS_CORRECT", "NS_REPLY", "NS_REACTIONS", "NS_FALLBACK"]
