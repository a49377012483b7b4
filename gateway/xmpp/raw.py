"""
Messages to an address that takes commands (an IRC server's JID, as in
biboumi): the body goes to the network as commands, and what the server
answers comes back from that JID as chat messages (see IRawCommands).
"""

from __future__ import annotations

from twisted.words.xish import domish

from gateway.interfaces import IRawCommands
from gateway.model import GatewayError, RegistrationError
from gateway.xmpp.dispatch import already_handled
from gateway.xmpp.escaping import EscapingError, address_of
from gateway.xmpp.handler import ComponentHandler
from gateway.xmpp.stanzas import parse_jid, text_of

class RawCommandHandler(ComponentHandler):

    def connectionInitialized(self):
        if IRawCommands.providedBy(self.bridge.adapter):
            self.xmlstream.addObserver("/message", self.on_message, priority=5)

    def on_message(self, stanza: domish.Element) -> None:
        if stanza.getAttribute("type") == "error" or already_handled(stanza):
            return
        to = parse_jid(stanza.getAttribute("to"))
        sender = parse_jid(stanza.getAttribute("from"))
        if to is None or sender is None or not to.user or to.resource:
            return
        adapter = self.bridge.adapter
        try:
            address = adapter.normalize_address(address_of(to.user))
        except (GatewayError, EscapingError):
            return                                     # the message handler answers bad addresses
        if not adapter.takes_commands(address):
            return
        stanza.handled = True
        body = text_of(stanza, None, "body")
        if body is None:
            return                                     # chat states and receipts: nothing to run
        # Commands are about now, like room messages: sent at once, not queued.
        d = self.bridge.ensure_registration(sender.userhost())
        d.addCallback(self._run, address, body)
        d.addErrback(self.refuse_failure(stanza, f"raw command to {address}"))

    def _run(self, registration, address: str, body: str):
        if registration is None:
            raise RegistrationError(f"register with {self.domain} first (XEP-0077)", "registration-required")
        return self.bridge.adapter.raw_command(registration, address, body)


__all__ = ["RawCommandHandler"]
