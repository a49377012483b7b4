"""
XEP-0100 presence: the subscription handshake with the component, our
availability towards registered users (available at start, unavailable at
shutdown), and the contacts' presence. After a user unsubscribes, the gateway
sends that user nothing more until they subscribe again.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from gateway.interfaces import IConnectionStatus
from gateway.model import GatewayError
from gateway.xmpp.caps import caps_element
from gateway.xmpp.dispatch import already_handled
from gateway.xmpp.escaping import EscapingError, address_of
from gateway.xmpp.stanzas import parse_jid, xml_safe
from gateway.xmpp.handler import ComponentHandler

log = Logger(namespace="gateway.xmpp.presence")


class PresenceHandler(ComponentHandler):
    def __init__(self, stream, bridge, disco, roster=None):
        super().__init__(stream, bridge)
        self.disco = disco
        #: gateway.xmpp.roster.RosterKeeper, told when a user leaves.
        self.roster = roster

    def connectionInitialized(self):
        self.xmlstream.addObserver("/presence", self.on_presence)
        self.announce("available").addErrback(lambda f: log.failure("announcing presence failed", f))

    # -- sending ----------------------------------------------------------

    def presence(self, to: str, ptype: str | None = None, sender: str | None = None, status: str | None = None) -> None:
        el = domish.Element((None, "presence"))
        el["to"] = to
        el["from"] = sender or self.domain
        if ptype and ptype != "available":
            el["type"] = ptype
        if status:
            el.addElement("status", content=xml_safe(status))
        if ptype in (None, "available"):
            el.addChild(caps_element(self.disco.contact_ver if sender else self.disco.ver))
        self.send(el)

    @defer.inlineCallbacks
    def announce(self, ptype: str):
        """Tell every subscribed registered user that the gateway is (un)available."""
        registrations = yield self.bridge.registry.list_registrations(self.domain)
        for reg in registrations:
            if reg.subscribed:
                self.presence(reg.jid, ptype)
        return len(registrations)

    def on_registered(self, jid: str, new: bool) -> None:
        if new:
            self.presence(jid, "subscribe")
        self.presence(jid, "available")

    def on_unregistered(self, jid: str) -> None:
        if self.roster is not None:
            self.roster.forget(jid)
        for ptype in ("unsubscribe", "unsubscribed", "unavailable"):
            self.presence(jid, ptype)

    # -- receiving --------------------------------------------------------

    def on_presence(self, stanza: domish.Element) -> None:
        if already_handled(stanza):
            return                       # a group chat join or leave, taken by the MUC handler
        stanza.handled = True
        sender = parse_jid(stanza.getAttribute("from"))
        to = parse_jid(stanza.getAttribute("to"))
        if sender is None or to is None:
            return
        ptype = stanza.getAttribute("type", "available")
        if ptype == "error":
            return
        if ptype == "subscribe" and self.bridge.adapter.auto_register:
            d = self.bridge.ensure_registration(sender.userhost())    # as joining a room would
        else:
            d = self.bridge.registration(sender.userhost())
        if to.user:
            d.addCallback(self._to_contact, sender, to, ptype)
        else:
            d.addCallback(self._to_gateway, sender, ptype)
        d.addErrback(lambda f: log.failure("presence from {jid} failed", f, jid=sender.full()))

    def _to_gateway(self, reg, sender, ptype: str):
        user = sender.userhost()
        if ptype == "subscribe":
            if reg is None:
                self.presence(user, "unsubscribed")
                return None
            self.presence(user, "subscribed")
            self.presence(user, "available")
            return None if reg.subscribed else self.bridge.set_subscribed(user, True)
        if ptype == "subscribed":
            if reg is not None:
                self.presence(user, "available")
                return None if reg.subscribed else self.bridge.set_subscribed(user, True)
            return None
        if ptype in ("unsubscribe", "unsubscribed"):
            if reg is not None and reg.subscribed:
                return self.bridge.set_subscribed(user, False)
            return None
        if ptype in ("probe", "available") and reg is not None and reg.subscribed:
            self.presence(sender.full() if ptype == "available" else user, "available")
        return None

    def _to_contact(self, reg, sender, to, ptype: str):
        if reg is None:
            if ptype == "subscribe":
                self.presence(sender.userhost(), "unsubscribed", to.userhost())
            return
        contact = to.userhost()
        if ptype == "subscribe" and self.roster is not None:
            self._user_subscribed(sender.userhost(), to.user)
        status = self._connection_status(sender.userhost(), to.user)
        if status is not None:
            if ptype in ("subscribe", "probe"):
                if ptype == "subscribe":
                    self.presence(sender.userhost(), "subscribed", contact)
                available, text = status
                self.presence(sender.userhost(), "available" if available else "unavailable", contact, text)
            return
        online = self.bridge.adapter.contact_presence == "available"
        if ptype == "subscribe":
            self.presence(sender.userhost(), "subscribed", contact)
            if online:
                self.presence(sender.userhost(), "available", contact)
        elif ptype == "probe" and online:
            self.presence(sender.userhost(), "available", contact)
        elif ptype == "available" and online:
            self.presence(sender.full(), "available", contact)

    def _user_subscribed(self, user: str, localpart: str) -> None:
        """The user added the contact themselves: the roster keeper never pushes it over their entry."""
        try:
            address = self.bridge.normalize_address(address_of(localpart))
        except (GatewayError, EscapingError):
            return
        self.roster.user_subscribed(user, address)

    def _connection_status(self, user: str, localpart: str):
        """(connected, text) when the contact is one of the user's connections (an IRC server), else None."""
        adapter = self.bridge.adapter
        if not IConnectionStatus.providedBy(adapter):
            return None
        try:
            address = adapter.normalize_address(address_of(localpart))
        except (GatewayError, EscapingError):
            return None
        return adapter.connection_status(user, address)
