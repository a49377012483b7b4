"""
XEP-0045 multi-user chat on the XMPP side, for networks with group chats (IRC):
presence to ``room@component/nick`` joins or leaves, groupchat messages go to the
room, chat messages to ``room@component/Nick`` go privately to that occupant. What
happens in the room comes back as RoomEvents, turned into stanzas here.
"""

from __future__ import annotations

import datetime
import re

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.xmlstream import toResponse
from twisted.words.xish import domish

from gateway.interfaces import IGroupChat, IRoomDirectory
from gateway.bridge.archive import stamp_us
from gateway.model import GatewayError, HistoryRequest, OutboundMessage, SendResult
from gateway.xmpp import references
from gateway.xmpp.dispatch import already_handled
from gateway.xmpp.escaping import EscapingError, escape, unescape
from gateway.xmpp.stanzas import error_reply, escape_text, parse_jid, quote_attr, text_of, xml_safe
from gateway.xmpp.handler import ComponentHandler

log = Logger(namespace="gateway.xmpp.muc")

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_DELAY = "urn:xmpp:delay"
NS_SID = "urn:xmpp:sid:0"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_PING = "urn:xmpp:ping"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_MUC_TRAFFIC = "http://jabber.org/protocol/muc#traffic"
CHAT_STATES = frozenset({"active", "composing", "paused", "inactive", "gone"})
#: The namespaces of the elements references.parse reads (a message without any has no references).
_REFERRING = frozenset({references.NS_CORRECT, references.NS_REPLY, references.NS_REACTIONS})
#: references.parse of a message referring to nothing, but for ``body`` (never changed: read only).
_NO_REFS = references.References()


def is_muc_stanza(adapter, stanza: domish.Element) -> bool:
    """Whether a stanza is for the MUC handler: to a room, for a network with rooms."""
    if not IGroupChat.providedBy(adapter):
        return False
    to = parse_jid(stanza.getAttribute("to"))
    if to is None or not to.user:
        return False
    return adapter.is_room(unescape(to.user))    # by its shape: a refused room still gets an answer


class MUCHandler(ComponentHandler):

    def connectionInitialized(self):
        if IGroupChat.providedBy(self.bridge.adapter):
            self.xmlstream.addObserver("/presence", self.on_presence, priority=10)
            self.xmlstream.addObserver("/message", self.on_message, priority=10)
            self.xmlstream.addObserver(f"/iq[@type='get']/ping[@xmlns='{NS_PING}']", self.on_ping, priority=10)
            self.xmlstream.addObserver(f"/iq[@type='get']/query[@xmlns='{NS_DISCO_INFO}'][@node='{NS_MUC_TRAFFIC}']",
                                       self.on_traffic, priority=10)

    def _room(self, stanza):
        to = parse_jid(stanza.getAttribute("to"))
        return to, self.bridge.adapter.normalize_address(unescape(to.user))

    # -- presence: join and leave -----------------------------------------------

    def on_presence(self, stanza: domish.Element) -> None:
        if not is_muc_stanza(self.bridge.adapter, stanza):
            return
        stanza.handled = True
        sender = parse_jid(stanza.getAttribute("from"))
        ptype = stanza.getAttribute("type")
        try:
            to, room = self._room(stanza)
        except GatewayError as e:
            if ptype in (None, "available"):
                self._presence_error(stanza, e.condition, e.text, e.error_type)
            return
        if ptype == "unavailable":
            self.bridge.leave_room(sender.userhost(), sender.resource or "", room).addErrback(
                lambda f: log.failure("leaving {room} failed", f, room=room))
            return
        if ptype not in (None, "available"):
            return
        if not to.resource:
            self._presence_error(stanza, "jid-malformed", "join with a nickname: room@service/nick")
            return
        muc = next(stanza.elements(NS_MUC, "x"), None)
        password = text_of(muc, NS_MUC, "password") if muc is not None else None
        history = parse_history(next(muc.elements(NS_MUC, "history"), None)) if muc is not None else None
        d = self.bridge.join_room(sender.userhost(), sender.resource or "", room, to.resource, password, history)

        def failed(failure):
            if failure.check(GatewayError):
                e = failure.value
                self._presence_error(stanza, e.condition, e.text, e.error_type)
            else:
                log.failure("joining {room} failed", failure, room=room)
                self._presence_error(stanza, "internal-server-error", "the gateway could not join the room")

        d.addErrback(failed)

    def _presence_error(self, stanza, condition: str, text: str | None, error_type: str | None = None) -> None:
        self.stream.count_error(condition)
        reply = error_reply(stanza, condition, text, error_type)
        reply.addElement((NS_MUC, "x"))
        self.send(reply)

    # -- XEP-0410 self-ping ----------------------------------------------------------

    def on_ping(self, iq: domish.Element) -> None:
        """
        A ping to an occupant's JID says whether the sender is still in the room
        (after a gateway restart the client would otherwise believe it is):
        answered by the room, result when the sender's resource is joined,
        not-acceptable when not. Pings to the room's bare JID stay the
        component's (answered with a result).
        """
        to = parse_jid(iq.getAttribute("to"))
        if to is None or not to.resource or not is_muc_stanza(self.bridge.adapter, iq):
            return
        iq.handled = True
        sender = parse_jid(iq.getAttribute("from"))
        try:
            room = self.bridge.adapter.normalize_address(unescape(to.user))
        except GatewayError as e:
            self.stream.refuse(iq, e.condition, e.text, e.error_type)
            return
        if self.bridge.adapter.joined_nick(sender.userhost(), sender.resource or "", room) is None:
            self.stream.refuse(iq, "not-acceptable", "you are not in this room", "cancel")
            return
        self.send(toResponse(iq, "result"))

    def on_traffic(self, iq: domish.Element) -> None:
        """XEP-0045 §6.5: the traffic a room carries besides messages — none (wokkel would say item-not-found)."""
        if not is_muc_stanza(self.bridge.adapter, iq):
            return
        iq.handled = True
        reply = toResponse(iq, "result")
        reply.addElement((NS_DISCO_INFO, "query"))["node"] = NS_MUC_TRAFFIC
        self.send(reply)

    # -- messages ---------------------------------------------------------------

    def on_message(self, stanza: domish.Element) -> None:
        handled, body_el, subject_el, chat_state, referring, origin_el = read_message(stanza)
        if handled:
            return                                  # an invitation (gateway/xmpp/muc_admin.py)
        attributes = stanza.attributes
        if attributes.get("type") == "error" or not IGroupChat.providedBy(self.bridge.adapter):
            return
        to = parse_jid(attributes.get("to"))
        if to is None or not to.user:
            return
        local = unescape(to.user)
        adapter = self.bridge.adapter
        if not adapter.is_room(local):              # by its shape: a refused room still gets an answer
            return
        stanza.handled = True
        sender = parse_jid(attributes.get("from"))
        try:
            room = adapter.normalize_address(local)
        except GatewayError as e:
            self.stream.refuse(stanza, e.condition, e.text, e.error_type)
            return
        body = str(body_el) if body_el is not None else None
        subject = str(subject_el) if subject_el is not None else None
        if referring:
            try:
                refs = references.parse(stanza, body)
            except GatewayError as e:
                self.stream.refuse(stanza, e.condition, e.text, e.error_type)
                return
        else:
            refs = _NO_REFS                          # what references.parse finds in such a stanza
        body = refs.body if referring else body
        if body is None and subject is None and not refs.reaction_to and chat_state is None:
            return
        if to.resource:                              # private message to an occupant
            recipient, kind = self.bridge.adapter.occupant_address(room, to.resource), "chat"
        else:
            recipient, kind = room, "groupchat"
        # The occupant replied to, as the client names it (room/nick): used when the gateway does not
        # remember the message.
        author = parse_jid(refs.reply_jid) if refs.reply_jid else None
        author_nick = author.resource if author is not None and author.userhost() == to.userhost() else None
        message = OutboundMessage(component=self.domain, user=sender.userhost(), recipient=recipient, body=body,
                                  subject=subject, xmpp_id=attributes.get("id"), resource=sender.resource,
                                  kind=kind, chat_state=chat_state, correction_of=refs.correction_of,
                                  reply_to=refs.reply_to, reaction_to=refs.reaction_to,
                                  reactions=refs.reactions if referring else [],
                                  ref_body=refs.quoted, ref_author=author_nick,
                                  origin_id=_origin_id(origin_el))
        if body is None and subject is None and not refs.reaction_to:
            d = self.bridge.chat_state(message)       # typing: passed on now or not at all
        elif kind == "groupchat":
            # Room traffic is about now: not queued; sent at once when it can be (no Deferred).
            try:
                d = self.bridge.send_direct_now(message)
            except Exception:
                self.refuse_failure(stanza, "accepting a room message")(Failure())
                return
            if d is None or type(d) is SendResult or not isinstance(d, defer.Deferred):
                return                               # sent at once (an ABC's isinstance costs two calls)
        else:
            d = self.bridge.ensure_registration(message.user)
            d.addCallback(lambda reg: self.bridge.submit(message, reg))
        d.addErrback(self.refuse_failure(stanza, "accepting a room message"))


def read_message(stanza: domish.Element):
    """
    What the MUC handler reads of a message, in one walk over its children (the
    hot path walked them five times): whether another handler took it
    (``already_handled``: a peer's ``<handled/>`` child does not count), the
    first ``body`` and ``subject`` elements (any namespace, as ``text_of``),
    the first chat state, whether ``references.parse`` has anything to read,
    and the first ``origin-id`` element. tests/unit/test_muc_read_fast.py compares it with those helpers.
    """
    body_el = subject_el = origin_el = None
    chat_state = None
    handled = already_handled(stanza)
    referring = False
    for el in stanza.children:
        if isinstance(el, str):
            continue
        name, uri = el.name, el.uri
        if name == "body":
            if body_el is None:
                body_el = el
        elif name == "subject":
            if subject_el is None:
                subject_el = el
        elif uri == NS_SID:
            if name == "origin-id" and origin_el is None:
                origin_el = el
        elif uri == NS_CHATSTATES:
            if chat_state is None and name in CHAT_STATES:
                chat_state = name
        elif uri in _REFERRING:
            referring = True                         # references.parse has something to read
    return handled, body_el, subject_el, chat_state, referring, origin_el


#: Longest client id kept (origin-id): a longer one is not an id anyone needs back.
MAX_ID = 200


def origin_id(stanza: domish.Element) -> str | None:
    """The sender's XEP-0359 origin-id, if it is one we can give back (bounded, XML-safe)."""
    return _origin_id(next(stanza.elements(NS_SID, "origin-id"), None))


def _origin_id(el: domish.Element | None) -> str | None:
    """origin_id of the stanza's first ``origin-id`` element ``el``."""
    value = el.attributes.get("id") if el is not None else None
    if not value or len(value) > MAX_ID or xml_safe(value) != value:
        return None
    return value


def _count(value: str | None, most: int) -> int | None:
    # ASCII digits only: str.isdigit() is also true of '²', which int() refuses.
    value = value.strip() if value is not None else None
    if not value or not (value.isascii() and value.isdigit()) or len(value) > 9:
        return None
    return min(int(value), most)


def parse_history(el: domish.Element | None) -> HistoryRequest | None:
    """
    XEP-0045 §7.2.15 ``<history/>``: the limits a client asks for. A value that
    is not one (a negative count, a date that is none) is left out, as if not
    given: the join goes on with the room's default.
    """
    if el is None:
        return None
    since = None
    if el.getAttribute("since"):
        try:
            since = stamp_us(el.getAttribute("since")) / 1_000_000
        except (ValueError, OverflowError):
            since = None
    return HistoryRequest(maxstanzas=_count(el.getAttribute("maxstanzas"), 10**6),
                          maxchars=_count(el.getAttribute("maxchars"), 10**9),
                          seconds=_count(el.getAttribute("seconds"), 10**9), since=since)


NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_RSM = "http://jabber.org/protocol/rsm"


class RoomListHandler(ComponentHandler):
    """
    disco#items of a group chat server's JID (an IRC server): its rooms, paged with
    XEP-0059 result set management, as biboumi lists them.
    """

    def connectionInitialized(self):
        if IRoomDirectory.providedBy(self.bridge.adapter):
            self.xmlstream.addObserver(f"/iq[@type='get']/query[@xmlns='{NS_DISCO_ITEMS}']", self.on_items,
                                       priority=10)

    def on_items(self, iq: domish.Element) -> None:
        to = parse_jid(iq.getAttribute("to"))
        query = next(iq.elements(NS_DISCO_ITEMS, "query"))
        if to is None or not to.user or query.getAttribute("node"):
            return
        adapter = self.bridge.adapter
        try:
            server = adapter.normalize_address(unescape(to.user))
        except GatewayError:
            return
        if not adapter.is_server(server):
            return
        iq.handled = True
        rsm = next(query.elements(NS_RSM, "set"), None)
        try:
            limit = int(text_of(rsm, NS_RSM, "max") or 100) if rsm is not None else None
        except ValueError:
            self.stream.refuse(iq, "bad-request", "<max/> must be a whole number", "modify")
            return
        if limit is not None and limit < 0:
            self.stream.refuse(iq, "bad-request", "<max/> must not be negative", "modify")
            return
        after = text_of(rsm, NS_RSM, "after") if rsm is not None else None
        sender = parse_jid(iq["from"])
        d = self.bridge.ensure_registration(sender.userhost())
        d.addCallback(lambda reg: adapter.list_rooms(reg, server))
        d.addCallback(self._answer, iq, limit, after)
        d.addErrback(self.refuse_failure(iq, f"listing rooms of {server}"))

    def _answer(self, rooms: list[tuple[str, str]], iq, limit: int | None, after: str | None) -> None:
        rooms = sorted(rooms)
        start = 0
        if after:
            start = next((i + 1 for i, (address, _) in enumerate(rooms) if address == after), len(rooms))
        page = rooms[start:start + limit] if limit is not None else rooms[start:]
        reply = domish.Element((None, "iq"))
        reply["type"], reply["id"], reply["to"], reply["from"] = "result", iq["id"], iq["from"], iq["to"]
        query = reply.addElement((NS_DISCO_ITEMS, "query"))
        for address, name in page:
            item = query.addElement("item")
            item["jid"] = f"{escape(self.bridge.adapter.jid_localpart(address))}@{self.domain}"
            item["name"] = xml_safe(name)
        if limit is not None:
            rset = query.addElement((NS_RSM, "set"))
            if page:
                rset.addElement("first", content=page[0][0])["index"] = str(start)
                rset.addElement("last", content=page[-1][0])
            rset.addElement("count", content=str(len(rooms)))
        self.send(reply)


def status_codes(event, non_anonymous: bool) -> list[int]:
    """The XEP-0045 status codes that say what a neutral occupant presence means."""
    codes = []
    if event.unavailable and event.new_nick:
        codes.append(303)
    if event.kicked:
        codes.append(307)
    if event.own:
        codes.append(110)
    if event.service_stopping:
        codes.append(332)
    if event.joined:
        if non_anonymous:
            codes.append(100)
        if event.nick_assigned:
            codes.append(210)
    return codes


#: ``user@host`` as the resource of an occupant's real JID: what gateway.adapters.irc.text.userhost
#: lets through, checked again here (another adapter may be less careful).
_USERHOST = re.compile(r"[A-Za-z0-9~._\-\[\]\\`^{}|+=]{1,64}@[A-Za-z0-9._:/\-]{1,253}", re.ASCII)


def occupant_jid(domain: str, room: str, nick: str | None, user: str | None, host: str | None,
                 localpart=lambda address: address, occupant=None) -> str | None:
    """
    An occupant's real JID (XEP-0045 non-anonymous rooms), as biboumi gives it:
    the JID private messages to them go to (``nick%server@component``), with
    ``user@host`` as its resource when the network told us. None when no JID
    can name them.
    """
    if occupant is None or not nick:
        return None
    try:
        bare = f"{escape(xml_safe(localpart(occupant(room, nick))))}@{domain}"
    except (GatewayError, EscapingError):
        return None
    resource = f"{user}@{host}" if user and host else ""
    return f"{bare}/{resource}" if _USERHOST.fullmatch(resource) else bare


def _invitation(room_jid: str, domain: str, event, localpart, occupant, to: str) -> domish.Element:
    """XEP-0045 §7.8.2: a mediated invitation, from the room, naming who invites."""
    el = domish.Element((None, "message"))
    el["from"] = room_jid
    x = el.addElement((NS_MUC_USER, "x"))
    invite = x.addElement("invite")
    inviter = occupant_jid(domain, event.room, event.actor, None, None, localpart, occupant)
    if inviter:
        invite["from"] = inviter
    if event.reason:
        invite.addElement("reason", content=xml_safe(event.reason))
    if event.body:
        el.addElement("body", content=xml_safe(event.body))
    return el


def room_stanzas(domain: str, event, localpart=lambda address: address,
                 non_anonymous: bool = False, occupant=None) -> list[domish.Element]:
    """
    The stanzas a RoomEvent becomes, one per joined resource. ``occupant``
    (room, nick) → foreign address of an occupant, for real JIDs in
    non-anonymous rooms.
    """
    try:
        room_jid = f"{escape(xml_safe(localpart(event.room)))}@{domain}"
    except EscapingError:
        return []
    nick = xml_safe(event.nick)
    real = None
    if event.kind == "presence" and non_anonymous and not event.own:
        real = occupant_jid(domain, event.room, event.nick, event.occupant_user, event.occupant_host, localpart,
                            occupant)
    out = []
    for resource in event.resources:
        to = f"{event.user}/{resource}" if resource else event.user
        if event.kind == "invite":
            el = _invitation(room_jid, domain, event, localpart, occupant, to)
        elif event.kind == "presence":
            el = domish.Element((None, "presence"))
            el["from"] = f"{room_jid}/{nick}"
            if event.unavailable:
                el["type"] = "unavailable"
            x = el.addElement((NS_MUC_USER, "x"))
            item = x.addElement("item")
            item["affiliation"] = event.affiliation
            item["role"] = "none" if event.unavailable else event.role
            if real:
                item["jid"] = real
            elif event.own and non_anonymous:
                item["jid"] = to                    # the user's own real JID, as any non-anonymous room says
            if event.new_nick:
                item["nick"] = xml_safe(event.new_nick)
            if event.actor:
                item.addElement("actor")["nick"] = xml_safe(event.actor)
            if event.reason:
                item.addElement("reason", content=xml_safe(event.reason))
            for code in status_codes(event, non_anonymous):
                x.addElement("status")["code"] = str(code)
        elif event.kind == "join-error":
            el = error_reply(_fake_presence(to, f"{room_jid}/{nick}"), event.condition or "not-allowed",
                             event.reason)
            el.addElement((NS_MUC, "x"))
        else:
            el = domish.Element((None, "message"))
            el["type"] = "groupchat"
            if event.message_id:
                el["id"] = event.message_id
            el["from"] = f"{room_jid}/{nick}" if nick else room_jid
            if event.kind == "subject":
                el.addElement("subject", content=xml_safe(event.subject) or "")
            else:
                if event.body is not None or not (event.chat_state or event.reaction_to):
                    el.addElement("body", content=xml_safe(event.body) or "")
                extra = _extras(room_jid, event)
                if extra:
                    el.addRawXml(extra)
                if event.origin_id:
                    el.addElement((NS_SID, "origin-id"))["id"] = event.origin_id
                if event.stanza_id:
                    sid = el.addElement((NS_SID, "stanza-id"))
                    sid["id"] = xml_safe(event.stanza_id)     # as the hot path writes it
                    sid["by"] = room_jid
                if event.timestamp:
                    delay = el.addElement((NS_DELAY, "delay"))
                    delay["stamp"] = datetime.datetime.fromtimestamp(
                        event.timestamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                    delay["from"] = room_jid
        el["to"] = to
        out.append(el)
    return out


#: Entries in each of room_message_strings' caches (a peer inventing nicks or resources only evicts).
ROOM_STRINGS = 2048


def _cached(cache: dict, key, make):
    found = cache.get(key)
    if found is None:
        found = make()
        if len(cache) >= ROOM_STRINGS:
            del cache[next(iter(cache))]
        cache[key] = found
    return found


def room_presence_strings(domain: str, event, localpart=lambda address: address, non_anonymous: bool = False,
                          occupant=None, cache: tuple[dict, dict] | None = None) -> list[str] | None:
    """
    An occupant presence as serialised stanzas, one per resource: the hot path
    of joins and reconnect storms, where a channel of n members joined by n
    users is n² presences (each as a domish tree and its serialiser cost
    about a quarter of the gateway's time at 2,000 users). Only the plain
    presence (no actor, reason or nick change, a nick to send it from); None
    for the others, which room_stanzas writes. ``cache`` as room_message_strings'.
    """
    if event.actor or event.reason or event.new_nick or not event.nick:
        return None
    senders, recipients = cache if cache is not None else ({}, {})

    def sender():
        # Keyed apart from room_message_strings' entries, which name the bare room for a nick
        # that cleans to nothing; a presence always comes from room/nick (or not from here).
        nick = xml_safe(event.nick)
        room_jid = f"{escape(xml_safe(localpart(event.room)))}@{domain}"
        return (room_jid, quote_attr(f"{room_jid}/{nick}")) if nick else False
    try:
        found = _cached(senders, (event.room, event.nick, "presence"), sender)
    except EscapingError:
        return []
    if found is False:
        return None
    room_jid, from_ = found
    real = None
    if non_anonymous and not event.own:
        real = occupant_jid(domain, event.room, event.nick, event.occupant_user, event.occupant_host, localpart,
                            occupant)
    kind = " type='unavailable'" if event.unavailable else ""
    role = "none" if event.unavailable else event.role
    head = f"<presence from={from_}{kind} to="
    item = f"><x xmlns='{NS_MUC_USER}'><item affiliation={quote_attr(event.affiliation)} role={quote_attr(role)}"
    codes = "".join(f"<status code='{code}'/>" for code in status_codes(event, non_anonymous))
    tail = f"/>{codes}</x></presence>"
    shared = item + (f" jid={quote_attr(real)}" if real else "") + tail
    own_jid = event.own and non_anonymous
    out = []
    user = event.user
    for r in event.resources:
        to = _cached(recipients, (user, r), lambda: quote_attr(f"{user}/{r}" if r else user))
        out.append(head + to + (item + f" jid={to}" + tail if own_jid else shared))
    return out


def room_message_strings(domain: str, event, localpart=lambda address: address,
                         cache: tuple[dict, dict] | None = None) -> list[str]:
    """
    A groupchat message said now (no delay) as serialised stanzas, one per resource: the hot path.
    ``cache``: two dicts the caller keeps (bounded here by ROOM_STRINGS) for the strings that
    repeat from line to line, the escaped room JID with its sender attribute per (room, nick) and
    the quoted recipient per (user, resource); ``domain`` and ``localpart`` must be the same for
    every call given the same cache.
    """
    senders, recipients = cache if cache is not None else ({}, {})
    key = (event.room, event.nick)
    found = senders.get(key)
    if found is None:
        try:
            room_jid = f"{escape(xml_safe(localpart(event.room)))}@{domain}"
        except EscapingError:
            return []
        nick = xml_safe(event.nick)
        found = (room_jid, quote_attr(f"{room_jid}/{nick}" if nick else room_jid))
        if len(senders) >= ROOM_STRINGS:
            del senders[next(iter(senders))]
        senders[key] = found
    room_jid, sender = found
    message_id = f" id={quote_attr(event.message_id)}" if event.message_id else ""
    body = "" if event.body is None and (event.chat_state or event.reaction_to) else \
        f"<body>{escape_text(xml_safe(event.body) or '')}</body>"
    if event.origin_id:
        body += f"<origin-id xmlns='{NS_SID}' id={quote_attr(event.origin_id)}/>"
    if event.stanza_id:
        body += f"<stanza-id xmlns='{NS_SID}' id={quote_attr(xml_safe(event.stanza_id))} by={quote_attr(room_jid)}/>"
    head = f"<message type='groupchat' from={sender}{message_id} to="
    tail = f">{body}{_extras(room_jid, event)}</message>" if (
        event.correction_of or event.reply_to or event.reaction_to or event.chat_state) else f">{body}</message>"
    out = []
    user = event.user
    for r in event.resources:
        out.append(head + _cached(recipients, (user, r), lambda: quote_attr(f"{user}/{r}" if r else user)) + tail)
    return out


def _extras(room_jid: str, event) -> str:
    """A room message's reply, reactions and chat state, serialised."""
    out = ""
    if event.correction_of:
        out += f"<replace xmlns='{references.NS_CORRECT}' id={quote_attr(xml_safe(event.correction_of))}/>"
    if event.reply_to or event.reaction_to:
        author = f"{room_jid}/{xml_safe(event.ref_author)}" if event.ref_author else None
        out += references.inbound_xml(event.reply_to, author, event.reaction_to, event.reactions)
    if event.chat_state in CHAT_STATES:
        out += f"<{event.chat_state} xmlns='{NS_CHATSTATES}'/>"
    return out


def _fake_presence(to: str, sent_to: str) -> domish.Element:
    p = domish.Element((None, "presence"))
    p["from"] = to
    p["to"] = sent_to
    return p


__all__ = ["MUCHandler", "RoomListHandler", "room_stanzas", "room_message_strings", "is_muc_stanza", "status_codes",
           "origin_id", "parse_history", "read_message"]
