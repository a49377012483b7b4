"""Assemble one component: its stream, every protocol handler, and the link to its bridge."""

from __future__ import annotations

from gateway.xmpp.commands import CommandsHandler
from gateway.xmpp.component import ComponentStream
from gateway.xmpp.disco import GatewayDisco
from gateway.xmpp.iq_gateway import GatewayIQHandler
from gateway.xmpp.messages import MessageHandler, StanzaOutput
from gateway.xmpp.muc import MUCHandler, RoomListHandler
from gateway.xmpp.ping import PingHandler
from gateway.xmpp.presence import PresenceHandler
from gateway.xmpp.register import RegisterHandler
from gateway.xmpp.version import VersionHandler
from wokkel.disco import DiscoHandler as _WokkelDiscoHandler
from wokkel.subprotocols import XMPPHandler


class DiscoHandler(_WokkelDiscoHandler):
    """wokkel's disco, leaving alone queries another handler answered (room lists with paging)."""

    def handleRequest(self, iq):
        if getattr(iq, "handled", False):
            return
        super().handleRequest(iq)


class BridgeLink(XMPPHandler):
    """Tells the bridge when the stream is up (to flush held inbound messages) or down."""

    def __init__(self, bridge):
        super().__init__()
        self.bridge = bridge

    def connectionInitialized(self):
        self.bridge.stream_up()

    def connectionLost(self, reason):
        self.bridge.stream_down()


def build_component(component, xmpp_settings: dict, gateway_settings: dict, bridge, on_fatal, reactor):
    """A ComponentStream with every handler attached, and the bridge's output set to it."""
    stream = ComponentStream(component.domain, component.host or xmpp_settings["host"],
                             component.port or xmpp_settings["port"], component.secret, xmpp_settings,
                             gateway_settings["allowed_domains"], on_fatal, reactor)
    disco_info = GatewayDisco(component.domain, component.name, bridge.adapter)
    presence = PresenceHandler(stream, bridge, disco_info)
    stream.pinger = PingHandler(component.domain, xmpp_settings["ping_interval"], xmpp_settings["ping_timeout"],
                                reactor)
    for handler in (
        DiscoHandler(),
        disco_info,
        VersionHandler(),
        stream.pinger,
        presence,
        RegisterHandler(stream, bridge, presence),
        GatewayIQHandler(component.domain, bridge),
        CommandsHandler(stream, bridge, presence, gateway_settings["admins"], reactor),
        MUCHandler(stream, bridge),
        RoomListHandler(stream, bridge),
        MessageHandler(stream, bridge),
        BridgeLink(bridge),
    ):
        handler.setHandlerParent(stream)
    stream.presence = presence
    bridge.attach(StanzaOutput(stream, bridge.adapter))
    return stream
