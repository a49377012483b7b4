"""
Messages between users and foreign contacts: stanzas in, neutral messages to
the bridge; neutral messages out, stanzas to users. XEP-0184 receipts,
XEP-0085 chat states, XEP-0066 out-of-band URLs, XEP-0203 delay and
XEP-0201 threads are carried through when the adapter has them.
"""

from __future__ import annotations

import dataclasses
import datetime
import unicodedata

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish
from zope.interface import implementer

from gateway import metrics
from gateway.bridge.bridge import UNKNOWN
from gateway.interfaces import IGroupChat, IStanzaOutput
from gateway.model import AddressError, GatewayError, InboundMessage, OutboundMessage
from gateway.xmpp.dispatch import already_handled
from gateway.xmpp.escaping import EscapingError, address_of, escape
from gateway.xmpp import references
from gateway.xmpp.muc import NS_SID, room_message_strings, room_presence_strings, room_stanzas
from gateway.xmpp.pacing import RoomPacer
from gateway.xmpp.stanzas import error_reply, escape_text, parse_jid, quote_attr, text_of, xml_safe
from gateway.xmpp.handler import ComponentHandler

log = Logger(namespace="gateway.xmpp.messages")

NS_RECEIPTS = "urn:xmpp:receipts"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_OOB = "jabber:x:oob"
NS_DELAY = "urn:xmpp:delay"
NS_CLIENT = "jabber:component:accept"
NS_ADDRESS = "http://jabber.org/protocol/address"
CHAT_STATES = frozenset({"active", "composing", "paused", "inactive", "gone"})


class MessageHandler(ComponentHandler):

    def __init__(self, stream, bridge, roster=None):
        super().__init__(stream, bridge)
        #: Per user: [the chain of messages waiting for an upload-URL check (while the user's upload
        #: service is being found), how many are on it]; the user's later messages join it, in order.
        self._waiting: dict[str, list] = {}
        #: gateway.xmpp.roster.RosterKeeper: a contact written to goes in the user's roster (once).
        self.roster = roster

    def connectionInitialized(self):
        self.xmlstream.addObserver("/message", self.on_message)

    def on_message(self, stanza: domish.Element) -> None:
        stype = stanza.getAttribute("type", "normal")
        if stype == "error" or already_handled(stanza):
            return
        to = parse_jid(stanza.getAttribute("to"))
        sender = parse_jid(stanza.getAttribute("from"))
        if to is None or sender is None:
            return
        group: list[str] = []
        try:
            if not to.user:
                addresses = next(stanza.elements(NS_ADDRESS, "addresses"), None)
                if addresses is None:
                    if text_of(stanza, None, "body") is not None:
                        self.stream.refuse(stanza, "service-unavailable",
                                           "write to a contact's address, not to the gateway itself")
                    return
                group = self._group(addresses)
                recipient = ",".join(group)
            else:
                recipient = self.bridge.normalize_address(address_of(to.user))
        except AddressError as e:
            self.stream.refuse(stanza, e.condition, e.text, e.error_type)
            return
        except EscapingError as e:
            self.stream.refuse(stanza, "jid-malformed", str(e), "modify")
            return
        try:
            message = self._parse(stanza, sender, recipient)
        except GatewayError as e:
            self.stream.refuse(stanza, e.condition, e.text, e.error_type)
            return
        if message is None:
            return
        message.group = group
        url = lone_url(message.body) if not message.attachments and not message.subject else None
        check = url is not None and self.bridge.uploads is not None and "attachments" in self.bridge.adapter.features
        behind = self._waiting.get(message.user)
        if not check and behind is None:
            self._route(stanza, message)          # the usual path: nothing to wait for
            return
        d = behind[0] if behind is not None else defer.succeed(None)
        if check:
            # A body that is only the URL of a file on the user's server's upload service
            # (XEP-0363, a client that sends no XEP-0066 element) is a file, not a text.
            # Synchronous once the service is known (cached).
            d.addCallback(lambda _: self.bridge.uploads.is_upload_url(message.user, url))
            d.addErrback(lambda f: False)
            d.addCallback(self._as_file, message, url)
        d.addCallback(lambda _: self._route(stanza, message))
        d.addErrback(self._failed, stanza)
        # Counted before its last step is added: a chain that ran through at once ends right here.
        entry = behind if behind is not None else self._waiting.setdefault(message.user, [d, 0])
        entry[1] += 1
        d.addBoth(self._done_waiting, message.user)

    def _done_waiting(self, result, user: str):
        """One message of the user's chain is through; the last one through ends the chain."""
        entry = self._waiting.get(user)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del self._waiting[user]
        return None

    @staticmethod
    def _as_file(is_file: bool, message: OutboundMessage, url: str) -> None:
        if is_file:
            message.attachments = [url]
            message.body = None

    def _route(self, stanza: domish.Element, message: OutboundMessage) -> None:
        known = self.bridge.known_registration(message.user)
        if known is not UNKNOWN:
            d = defer.maybeDeferred(self._accept, known, stanza, message)
        else:
            d = self.bridge.ensure_registration(message.user).addCallback(self._accept, stanza, message)
        d.addErrback(self._failed, stanza)

    def _group(self, addresses: domish.Element) -> list[str]:
        """XEP-0033: the foreign addresses a multi-recipient message goes to."""
        if "group" not in self.bridge.adapter.features:
            raise AddressError("this gateway cannot send group messages (XEP-0033)", "feature-not-implemented",
                               "cancel")
        group = []
        for address in addresses.elements(NS_ADDRESS, "address"):
            if address.getAttribute("type") not in ("to", "cc"):
                continue
            jid = parse_jid(address.getAttribute("jid"))
            if jid is None or jid.host != self.domain or not jid.user:
                raise AddressError(f"every group member must be an address at {self.domain}", "not-acceptable")
            try:
                member = self.bridge.normalize_address(address_of(jid.user))
            except EscapingError as e:
                raise AddressError(str(e), "jid-malformed")
            if member not in group:
                group.append(member)
        if len(group) < 2:
            raise AddressError("a group message needs at least two recipients", "bad-request")
        return group

    def _parse(self, stanza: domish.Element, sender, recipient: str) -> OutboundMessage | None:
        body = subject = thread = chat_state = None
        attachments: list[str] = []
        receipt = False
        for el in stanza.elements():
            if el.name == "body" and el.uri in (NS_CLIENT, None, ""):
                body = str(el)
            elif el.name == "subject" and el.uri in (NS_CLIENT, None, ""):
                subject = str(el)
            elif el.name == "thread" and el.uri in (NS_CLIENT, None, ""):
                thread = str(el)
            elif el.uri == NS_RECEIPTS and el.name == "request":
                receipt = True
            elif el.uri == NS_CHATSTATES and el.name in CHAT_STATES:
                chat_state = el.name
            elif el.uri == NS_OOB and el.name == "x":
                url = text_of(el, NS_OOB, "url")
                if url:
                    attachments.append(url.strip())
        refs = references.parse(stanza, body)
        if body is None and subject is None and not attachments and chat_state is None and not refs.any:
            return None
        body = refs.body
        if attachments and "attachments" not in self.bridge.adapter.features:
            # A network without files (IRC) gets the URLs as text: the body if it is one, else added to it.
            extra = [u for u in attachments if u != (body or "").strip()]
            body = "\n".join([body] * (body is not None) + extra)
            attachments = []
        elif body is not None and attachments and body.strip() in attachments:
            body = None  # the URL repeated in the body, as XEP-0066 clients do
        if (refs.correction_of or refs.reply_to) and body is None and not attachments:
            return None  # a correction or reply with nothing left to say
        return OutboundMessage(
            component=self.domain, user=sender.userhost(), recipient=recipient, body=body, subject=subject,
            thread=thread, attachments=attachments, xmpp_id=stanza.getAttribute("id"), resource=sender.resource,
            receipt_requested=receipt and "receipts" in self.bridge.adapter.features, chat_state=chat_state,
            correction_of=refs.correction_of, reply_to=refs.reply_to, reaction_to=refs.reaction_to,
            reactions=refs.reactions, ref_body=refs.quoted)

    def _accept(self, registration, stanza: domish.Element, message: OutboundMessage):
        if registration is None:
            self.stream.refuse(stanza, "registration-required",
                               f"register with {self.domain} first (XEP-0077)", "auth")
            return None
        if (message.body is None and message.subject is None and not message.attachments
                and not message.reaction_to):
            return self.bridge.chat_state(message)
        d = self.bridge.submit(message, registration)
        if self.roster is not None and not message.group:
            d.addCallback(self._seen, message)
        return d

    def _seen(self, result, message: OutboundMessage):
        self.roster.seen(message.user, message.recipient)
        return result

    def _failed(self, failure, stanza: domish.Element):
        if failure.check(GatewayError):
            e = failure.value
            self.stream.refuse(stanza, e.condition, e.text, e.error_type)
        else:
            log.failure("message from {sender} not accepted", failure, sender=stanza.getAttribute("from"))
            self.stream.refuse(stanza, "internal-server-error", "the gateway could not store the message", "wait")


def lone_url(body: str | None) -> str | None:
    """The URL a body consists of (nothing else but spaces around it), or None."""
    if not body or not body.lstrip()[:8].lower().startswith(("https://", "http://")):
        return None            # the usual answer, without looking at the whole body
    text = body.strip()
    if len(text) > 2048 or any(c.isspace() for c in text):
        return None
    return text


def visible(address: str) -> str:
    """``address`` with every character a reader could not see or tell apart written as its code point."""
    return "".join(c if c == " " or (c.isprintable() and not c.isspace() and unicodedata.category(c) != "Co")
                   else f"<U+{ord(c):04X}>" for c in xml_safe(address) or "")


@implementer(IStanzaOutput)
class StanzaOutput:
    """How the bridge reaches the users of one component (see IStanzaOutput)."""

    def __init__(self, stream, adapter=None, roster=None, pacing: dict | None = None, clock=None):
        self.stream = stream
        self.domain = stream.domain
        #: gateway.xmpp.roster.RosterKeeper: a contact heard from goes in the user's roster (once).
        self.roster = roster
        self.localpart = adapter.jid_localpart if adapter is not None else (lambda address: address)
        self.non_anonymous = IGroupChat.providedBy(adapter) and bool(adapter.occupants_visible)
        self.occupant = adapter.occupant_address if IGroupChat.providedBy(adapter) else None
        #: Room events go through a paced, coalescing queue (gateway/xmpp/pacing.py) when the
        #: config says how ([xmpp] room_pacing_*); without it (unit tests built by hand) they are written at once.
        self.pacer: RoomPacer | None = None
        #: room_message_strings' caches (the room JID and sender, the recipients), bounded there.
        self._room_strings: tuple[dict, dict] = ({}, {})
        if pacing is not None and clock is not None:
            dropped = metrics.ROOM_EVENTS_DROPPED.labels(self.domain)
            self.pacer = RoomPacer(self._write_room_event, lambda: self.stream.connected, clock,
                                   rate=pacing.get("room_pacing_bytes", 0), limit=pacing.get("room_queue_limit",
                                                                                            500_000),
                                   max_backlog=pacing.get("room_pacing_backlog", 0), backlog=self.stream.unsent,
                                   on_drop=dropped.inc)
            pacer = self.pacer
            metrics.ROOM_QUEUE.labels(self.domain).set_function(lambda: pacer.pending)

    @property
    def connected(self) -> bool:
        return self.stream.connected

    @property
    def holds_room_events(self) -> bool:
        return self.pacer is not None

    def contact_jid(self, address: str, resource: str | None = None) -> str:
        jid = f"{escape(xml_safe(self.localpart(address)))}@{self.domain}"
        return f"{jid}/{xml_safe(resource)}" if resource else jid

    def send_message(self, message: InboundMessage) -> None:
        body = xml_safe(message.body)
        try:
            sender = self.contact_jid(message.sender, message.nick if message.type == "groupchat" else None)
        except EscapingError as e:
            # No JID can name this sender (see gateway.xmpp.escaping): the server would
            # bounce the stanza after the message was counted as delivered. It comes from
            # the gateway itself instead, naming the sender; no reply can reach it anyway.
            metrics.UNADDRESSABLE.labels(self.domain).inc()
            log.warn("{sender!r} cannot be a JID ({e}): delivered from {domain}", sender=message.sender, e=e,
                     domain=self.domain)
            if body is None and message.subject is None and not message.attachments:
                return      # a chat state or receipt: nothing to show
            sender = self.domain
            body = f"[from {visible(message.sender)}, an address no JID can name: replies cannot reach it]" + (
                f"\n{body}" if body else "")
        mtype = "chat" if sender == self.domain and message.type == "groupchat" else message.type
        # The hot path (every message from a network): written as a string, one
        # escape per field, not built as a domish tree and serialised again.
        parts = [f"<message from={quote_attr(sender)} to={quote_attr(message.user)} type={quote_attr(mtype)} "
                 f"id={quote_attr(xml_safe(message.id))}>"]
        urls_list = [xml_safe(u) for u in message.attachments]
        if urls_list:
            urls = "\n".join(urls_list)
            body = f"{body}\n{urls}" if body else urls
        if message.subject is not None:
            parts.append(f"<subject>{escape_text(xml_safe(message.subject))}</subject>")
        if body is not None:
            parts.append(f"<body>{escape_text(body)}</body>")
        if message.thread:
            parts.append(f"<thread>{escape_text(xml_safe(message.thread))}</thread>")
        for url in urls_list:
            parts.append(f"<x xmlns='{NS_OOB}'><url>{escape_text(url)}</url></x>")
        if message.reply_to or message.reaction_to:
            try:
                author = self.contact_jid(message.ref_author) if message.ref_author else message.user
            except EscapingError:
                author = None
            parts.append(references.inbound_xml(message.reply_to, author, message.reaction_to, message.reactions))
        if message.chat_state in CHAT_STATES:
            parts.append(f"<{message.chat_state} xmlns='{NS_CHATSTATES}'/>")
        elif body is not None and message.type == "chat":
            parts.append(f"<active xmlns='{NS_CHATSTATES}'/>")
        # XEP-0359: the id is stable across every write of this message, so a
        # client deduplicates the repeat the inbound barrier may make after a crash.
        parts.append(f"<origin-id xmlns='{NS_SID}' id={quote_attr(xml_safe(message.id))}/>")
        if message.timestamp:
            stamp = datetime.datetime.fromtimestamp(message.timestamp, datetime.timezone.utc)
            parts.append(f"<delay xmlns='{NS_DELAY}' stamp='{stamp.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}' "
                         f"from={quote_attr(self.domain)}/>")
        parts.append("</message>")
        self.stream.send_serialized("".join(parts), "message")
        if (self.roster is not None and message.type != "groupchat" and sender != self.domain
                and (body is not None or message.subject is not None)):
            self.roster.seen(message.user, message.sender, inbound=True)

    def send_error(self, message: OutboundMessage, error: GatewayError) -> None:
        original = domish.Element((None, "message"))
        original["from"] = message.user + (f"/{message.resource}" if message.resource else "")
        try:
            original["to"] = self.domain if message.group else self.contact_jid(message.recipient)
        except EscapingError:
            original["to"] = self.domain
        if message.xmpp_id:
            original["id"] = message.xmpp_id
        reply = error_reply(original, error.condition, error.text or None, error.error_type)
        if message.body is not None:
            reply.addElement("body", content=message.body)
        self.stream.count_error(error.condition)
        self.stream.send(reply)

    def send_notice(self, user: str, resource: str | None, about: str, text: str, room: bool) -> None:
        """The gateway's own words to a user: in the room (from the room's JID), or a chat from the gateway."""
        to = f"{user}/{resource}" if resource else user
        try:
            sender, mtype = (self.contact_jid(about), "groupchat") if room else (self.domain, "chat")
        except EscapingError:
            sender, mtype = self.domain, "chat"
        self.stream.send_serialized(f"<message from={quote_attr(sender)} to={quote_attr(to)} type='{mtype}'>"
                                    f"<body>{escape_text(xml_safe(text) or '')}</body></message>", "message")

    def send_presence(self, user: str, contact: str, available: bool, status: str) -> None:
        try:
            sender = self.contact_jid(contact)
        except EscapingError:
            return
        unavailable = "" if available else " type='unavailable'"
        self.stream.send_serialized(f"<presence from={quote_attr(sender)} to={quote_attr(user)}{unavailable}>"
                                    f"<status>{escape_text(xml_safe(status) or '')}</status></presence>", "presence")

    def room_event_size(self, event) -> int:
        """The characters of the stanza a message event becomes for one resource (history's maxchars)."""
        one = dataclasses.replace(event, resources=list(event.resources[:1]) or [""])
        stanzas = room_stanzas(self.domain, one, self.localpart, self.non_anonymous)
        return len(stanzas[0].toXml()) if stanzas else 0

    def send_room_event(self, event) -> None:
        if self.pacer is not None:
            self.pacer.put(event)
        else:
            self._write_room_event(event)

    def flush_room_events(self) -> int:
        """Write every queued room event now, whatever the pacing budget (before the stream closes)."""
        return self.pacer.flush() if self.pacer is not None else 0

    def room_backlog(self) -> int:
        return self.pacer.pending if self.pacer is not None else 0

    def _write_room_event(self, event) -> int:
        """Render and write one room event; the bytes written (for the pacing budget)."""
        size = 0
        if event.kind == "message" and not event.timestamp:
            # The hot path (every channel line): the stanza written as a string, not a domish tree.
            for xml in room_message_strings(self.domain, event, self.localpart, self._room_strings):
                self.stream.send_serialized(xml, "message")
                size += len(xml)
            return size
        if event.kind == "presence":
            # Joins and storms: n² occupant presences, also written as strings when plain.
            strings = room_presence_strings(self.domain, event, self.localpart, self.non_anonymous, self.occupant,
                                            self._room_strings)
            if strings is not None:
                for xml in strings:
                    self.stream.send_serialized(xml, "presence")
                    size += len(xml)
                return size
        for el in room_stanzas(self.domain, event, self.localpart, self.non_anonymous, self.occupant):
            if not el.getAttribute("from"):
                el["from"] = self.domain
            xml = el.toXml()
            self.stream.send_serialized(xml, el.name)
            size += len(xml)
        return size

    def barrier(self):
        return self.stream.pinger.barrier()

    def send_receipt(self, user: str, resource: str | None, contact: str, xmpp_id: str) -> None:
        el = domish.Element((None, "message"))
        try:
            el["from"] = self.contact_jid(contact)
        except EscapingError:
            return          # the user could never have written to it: no message to confirm
        el["to"] = user + (f"/{resource}" if resource else "")
        el.addElement((NS_RECEIPTS, "received"))["id"] = xmpp_id
        self.stream.send(el)


__all__ = ["MessageHandler", "StanzaOutput"]
