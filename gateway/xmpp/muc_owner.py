"""
XEP-0045 §10.1 room configuration (muc#owner) for the user's own settings of a
room: the same fields as the ``configure`` command on the room's JID
(IAddressSettings), so a client's "configure room" dialog works as in biboumi.
On IRC these are the user's settings for the channel, not the channel's modes.
"""

from __future__ import annotations

from twisted.words.protocols.jabber.xmlstream import toResponse
from twisted.words.xish import domish

from gateway.interfaces import IAddressSettings, IGroupChat
from gateway.model import GatewayError
from gateway.xmpp.forms import FormError, build_form, checked_submission, submitted_form
from gateway.xmpp.handler import ComponentHandler
from gateway.xmpp.stanzas import parse_jid

NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
NS_ROOMCONFIG = "http://jabber.org/protocol/muc#roomconfig"


class RoomConfigHandler(ComponentHandler):

    def connectionInitialized(self):
        adapter = self.bridge.adapter
        if IGroupChat.providedBy(adapter) and IAddressSettings.providedBy(adapter):
            self.xmlstream.addObserver(f"/iq/query[@xmlns='{NS_MUC_OWNER}']", self.on_owner, priority=10)

    def on_owner(self, iq: domish.Element) -> None:
        room = self.claim_room_iq(iq)
        if room is None:
            return
        itype = iq.getAttribute("type")
        fields = list(self.bridge.adapter.address_fields(room))
        if not fields:
            self.stream.refuse(iq, "feature-not-implemented", "this room has no settings", "cancel")
            return
        user = parse_jid(iq["from"]).userhost()
        d = self.bridge.ensure_registration(user)
        if itype == "get":
            d.addCallback(self._form, iq, room, fields)
        else:
            d.addCallback(lambda reg: self._submit(iq, user, room, fields))

        d.addErrback(self.refuse_failure(iq, f"room configuration of {room}"))

    def _offered(self, fields, values, room: str):
        return build_form(fields, values, NS_ROOMCONFIG, title=f"Your settings for {self.bridge.adapter.room_name(room)}")

    def _form(self, registration, iq, room: str, fields) -> None:
        values = self.bridge.adapter.address_values(registration, room) if registration is not None else {}
        reply = toResponse(iq, "result")
        reply.addElement((NS_MUC_OWNER, "query")).addChild(self._offered(fields, values, room).toElement())
        self.send(reply)

    def _submit(self, iq, user: str, room: str, fields):
        query = next(iq.elements(NS_MUC_OWNER, "query"))
        if next(query.elements(NS_MUC_OWNER, "destroy"), None) is not None:
            raise GatewayError("these rooms cannot be destroyed from here: they live on the foreign network",
                               "feature-not-implemented", "cancel")
        x = submitted_form(query)
        if x is None or x.getAttribute("type") == "cancel":
            self.send(toResponse(iq, "result"))
            return None
        try:
            values = checked_submission(x, self._offered(fields, {}, room))
        except FormError as e:
            raise GatewayError(e.text, e.condition, "modify")
        d = self.bridge.update_address_settings(user, room, values)
        d.addCallback(lambda _: self.send(toResponse(iq, "result")))
        return d


__all__ = ["RoomConfigHandler"]
