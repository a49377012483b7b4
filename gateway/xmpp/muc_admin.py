"""
XEP-0045 room administration (muc#admin, §8 and §9) and mediated invitations
(§7.8.2) for networks that moderate (IModeration): a role or affiliation change
sent to a room becomes the network's kick, voice, operator rights or ban, and
is answered once the network has given its verdict (a result, or the error
condition it maps to: never silence). An invitation to a person of the network
becomes the network's own; one to a JID elsewhere is passed on from the room.

Lists of occupants by role or affiliation (a muc#admin ``get``) are not kept:
answered feature-not-implemented.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.words.protocols.jabber.xmlstream import toResponse
from twisted.words.xish import domish

from gateway.interfaces import IModeration
from gateway.model import GatewayError, PolicyViolation
from gateway.xmpp.escaping import EscapingError, escape, unescape
from gateway.xmpp.handler import ComponentHandler
from gateway.xmpp.stanzas import parse_jid, text_of, xml_safe

NS_MUC_ADMIN = "http://jabber.org/protocol/muc#admin"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"

ROLES = frozenset({"none", "visitor", "participant", "moderator"})
AFFILIATIONS = frozenset({"outcast", "none", "member", "admin", "owner"})
#: Items in one muc#admin request, invitations in one message: clients send one.
MAX_ITEMS = 10
MAX_INVITES = 5


def parse_item(item: domish.Element) -> tuple[str, str, str | None, str | None, str | None]:
    """
    ("role" or "affiliation", its value, nick, jid, reason) of one muc#admin
    item; GatewayError (bad-request) when it asks for no change, two at once,
    a value XEP-0045 does not have, or names nobody.
    """
    role, affiliation = item.getAttribute("role"), item.getAttribute("affiliation")
    if (role is None) == (affiliation is None):
        raise GatewayError("each item changes either a role or an affiliation", "bad-request", "modify")
    if role is not None and role not in ROLES:
        raise GatewayError(f"no such role: {xml_safe(role)[:40]!r}", "bad-request", "modify")
    if affiliation is not None and affiliation not in AFFILIATIONS:
        raise GatewayError(f"no such affiliation: {xml_safe(affiliation)[:40]!r}", "bad-request", "modify")
    nick, jid = item.getAttribute("nick"), item.getAttribute("jid")
    if not nick and not jid:
        raise GatewayError("name the occupant: nick or jid", "bad-request", "modify")
    reason = text_of(item, NS_MUC_ADMIN, "reason")
    return ("role", role, nick, jid, reason) if role is not None else ("affiliation", affiliation, nick, jid, reason)


class ModerationHandler(ComponentHandler):

    def connectionInitialized(self):
        if IModeration.providedBy(self.bridge.adapter):
            self.xmlstream.addObserver(f"/iq/query[@xmlns='{NS_MUC_ADMIN}']", self.on_admin, priority=10)
            # Before MUCHandler (priority 10), which would take it for a room message.
            self.xmlstream.addObserver(f"/message/x[@xmlns='{NS_MUC_USER}']/invite", self.on_invite, priority=20)

    def _address(self, jid: str | None) -> str | None:
        """The foreign address of a JID at this component, or None for a JID elsewhere (or none)."""
        parsed = parse_jid(jid)
        if parsed is None or parsed.host != self.domain or not parsed.user:
            return None
        try:
            return self.bridge.adapter.normalize_address(unescape(parsed.user))
        except GatewayError:
            return None

    def _nick(self, room: str, nick: str | None, jid: str | None) -> str:
        """The occupant an item names: by nick, else by the real JID the room gave them."""
        if nick:
            return nick
        address = self._address(jid)
        found = self.bridge.adapter.occupant_nick(room, address) if address else None
        if found is None:
            raise GatewayError("that JID is no occupant's here: name the occupant by nick", "item-not-found",
                               "cancel")
        return found

    # -- muc#admin ------------------------------------------------------------------

    def on_admin(self, iq: domish.Element) -> None:
        room = self.claim_room_iq(iq)
        if room is None:
            return
        itype = iq.getAttribute("type")
        if itype == "get":
            self.stream.refuse(iq, "feature-not-implemented", "lists of occupants by role or affiliation are not "
                                                               "kept here: the room's occupants show them", "cancel")
            return
        query = next(iq.elements(NS_MUC_ADMIN, "query"))
        items = list(query.elements(NS_MUC_ADMIN, "item"))
        if not items or len(items) > MAX_ITEMS:
            self.stream.refuse(iq, "bad-request", f"send from 1 to {MAX_ITEMS} items", "modify")
            return
        try:
            changes = [parse_item(item) for item in items]
        except GatewayError as e:
            self.stream.refuse(iq, e.condition, e.text, e.error_type)
            return
        user = parse_jid(iq["from"]).userhost()
        d = self.bridge.ensure_registration(user)
        d.addCallback(self._apply, room, changes)
        d.addCallback(lambda _: self.send(toResponse(iq, "result")))
        d.addErrback(self.refuse_failure(iq, f"moderation in {room}"))

    @defer.inlineCallbacks
    def _apply(self, registration, room: str, changes):
        """One change after the other (as the items come), each confirmed by the network; the first refusal ends it."""
        if registration is None:
            raise GatewayError(f"register with {self.domain} first", "registration-required", "auth")
        adapter = self.bridge.adapter
        for what, value, nick, jid, reason in changes:
            nick = self._nick(room, nick, jid)
            if what == "role":
                yield adapter.set_role(registration, room, nick, value, reason)
            else:
                yield adapter.set_affiliation(registration, room, nick, value, reason)

    # -- mediated invitations ----------------------------------------------------------

    def on_invite(self, stanza: domish.Element) -> None:
        if stanza.getAttribute("type") == "error":
            return
        room = self.bare_room(stanza)
        if room is None:
            return
        stanza.handled = True
        x = next(stanza.elements(NS_MUC_USER, "x"))
        invites = list(x.elements(NS_MUC_USER, "invite"))[:MAX_INVITES]
        sender = parse_jid(stanza.getAttribute("from"))
        d = self.bridge.ensure_registration(sender.userhost())
        d.addCallback(self._invite_all, sender, room, invites)
        d.addErrback(self.refuse_failure(stanza, f"an invitation to {room}"))

    @defer.inlineCallbacks
    def _invite_all(self, registration, sender, room: str, invites):
        if registration is None:
            raise GatewayError(f"register with {self.domain} first", "registration-required", "auth")
        adapter = self.bridge.adapter
        for invite in invites:
            if not self.bridge.limiter.allow(sender.userhost()):
                # Each invitation is a message the user sends (one from the room's JID to anyone, when
                # passed on): the user's rate limit holds, or the room is a relay for spam.
                raise PolicyViolation(self.bridge.rate_text)
            to = invite.getAttribute("to")
            reason = text_of(invite, NS_MUC_USER, "reason")
            if parse_jid(to) is None:
                raise GatewayError("invite someone: <invite to='JID'/>", "jid-malformed", "modify")
            address = self._address(to)
            if address is not None:
                yield adapter.invite(registration, room, address, reason)
            else:
                self._pass_on(sender, room, to, reason)

    def _pass_on(self, sender, room: str, to: str, reason: str | None) -> None:
        """An invitation to a JID elsewhere: from the room, as any MUC service passes it on (§7.8.2)."""
        if self.bridge.adapter.joined_nick(sender.userhost(), sender.resource or "", room) is None:
            raise GatewayError("join the room before inviting others into it", "not-acceptable", "cancel")
        try:
            room_jid = f"{escape(self.bridge.adapter.jid_localpart(room))}@{self.domain}"
        except EscapingError as e:
            raise GatewayError(str(e), "jid-malformed", "modify")
        el = domish.Element((None, "message"))
        el["from"], el["to"] = room_jid, to
        invite = el.addElement((NS_MUC_USER, "x")).addElement("invite")
        invite["from"] = sender.userhost()
        if reason:
            invite.addElement("reason", content=xml_safe(reason)[:1000])
        el.addElement("body", content=f"{sender.userhost()} invites you to {self.bridge.adapter.room_name(room)}")
        self.send(el)


__all__ = ["ModerationHandler", "parse_item", "NS_MUC_ADMIN"]
