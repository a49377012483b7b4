"""The base of the handlers that serve one component: its stream and its bridge."""

from twisted.logger import Logger
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler

from gateway.model import GatewayError
from gateway.xmpp.escaping import unescape
from gateway.xmpp.stanzas import parse_jid

log = Logger(namespace="gateway.xmpp.handler")


class ComponentHandler(XMPPHandler):
    def __init__(self, stream, bridge):
        super().__init__()
        self.stream = stream
        self.bridge = bridge
        self.domain = stream.domain

    def bare_room(self, stanza: domish.Element) -> str | None:
        """The room a stanza to a room's bare JID is for (muc#admin, muc#owner), or None: then it is
        someone else's to answer."""
        to = parse_jid(stanza.getAttribute("to"))
        if to is None or not to.user or to.resource:
            return None
        adapter = self.bridge.adapter
        try:
            room = adapter.normalize_address(unescape(to.user))
        except GatewayError:
            return None
        return room if adapter.is_room(room) else None

    def claim_room_iq(self, iq: domish.Element) -> str | None:
        """The room of a get or set to a room's bare JID that no handler took yet, marked as taken;
        None leaves it to the others."""
        if iq.getAttribute("type") not in ("get", "set") or getattr(iq, "handled", False):
            return None
        room = self.bare_room(iq)
        if room is not None:
            iq.handled = True
        return room

    def refuse_failure(self, stanza, what: str):
        """
        An errback answering ``stanza``: a GatewayError is the sender's to read
        (its condition and text); anything else is our bug, logged, and the
        sender is told to try later rather than left waiting.
        """
        def failed(failure):
            if failure.check(GatewayError):
                e = failure.value
                self.stream.refuse(stanza, e.condition, e.text, e.error_type)
            else:
                log.failure("{what} failed", failure, what=what)
                self.stream.refuse(stanza, "internal-server-error", None, "wait")
        return failed
