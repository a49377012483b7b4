"""
Assemble one component: its stream, every protocol handler, and the link to its
bridge. A spare connection for the same domain (gateway/xmpp/slots.py) is
assembled the same way and joins the primary's ``StreamGroup``, the bridge's
output.
"""

from __future__ import annotations

from twisted.logger import Logger

from gateway.xmpp.commands import CommandsHandler
from gateway.xmpp.component import ComponentStream
from gateway.xmpp.disco import GatewayDisco
from gateway.xmpp.dispatch import already_handled
from gateway.xmpp.iq_gateway import GatewayIQHandler
from gateway.xmpp.messages import MessageHandler, StanzaOutput
from gateway.xmpp.muc import MUCHandler, RoomListHandler
from gateway.xmpp.muc_admin import ModerationHandler
from gateway.xmpp.muc_owner import RoomConfigHandler
from gateway.xmpp.mam import MAMHandler
from gateway.xmpp.ping import PingHandler
from gateway.xmpp.presence import PresenceHandler
from gateway.xmpp.privilege import Grants, PrivilegeHandler
from gateway.xmpp.raw import RawCommandHandler
from gateway.xmpp.register import RegisterHandler
from gateway.xmpp.roster import ImportContactsCommand, RosterKeeper
from gateway.xmpp.slots import SpareKeeper, StreamGroup
from gateway.xmpp.upload import UploadHandler
from gateway.xmpp.version import VersionHandler
from wokkel.disco import DiscoHandler as _WokkelDiscoHandler
from wokkel.subprotocols import XMPPHandler

log = Logger(namespace="gateway.xmpp.service")


class DiscoHandler(_WokkelDiscoHandler):
    """wokkel's disco, leaving alone queries another handler answered (room lists with paging)."""

    def handleRequest(self, iq):
        if already_handled(iq):
            return
        super().handleRequest(iq)


class BridgeLink(XMPPHandler):
    """
    Tells the stream group (and so the bridge) when this connection is up (to
    flush held inbound messages) or down. Handlers are initialised only once
    the slot probe found that the connection gets traffic.
    """

    def __init__(self, group, stream):
        super().__init__()
        self.group = group
        self.stream = stream
        self._up = False

    def connectionInitialized(self):
        self._up = True
        self.group.member_up(self.stream)

    def connectionLost(self, reason):
        if self._up:
            self._up = False
            self.group.member_down(self.stream)


def build_component(component, xmpp_settings: dict, gateway_settings: dict, bridge, on_fatal, reactor,
                    group: StreamGroup | None = None, role: str = "primary", attachments: dict | None = None):
    """
    A ComponentStream with every handler attached. The primary (no ``group``)
    gets a new StreamGroup, which becomes the bridge's output; a spare joins
    the given group (see ``spare_keeper``).
    """
    stream = ComponentStream(component.domain, component.host or xmpp_settings["host"],
                             component.port or xmpp_settings["port"], component.secret, xmpp_settings,
                             gateway_settings["allowed_domains"], on_fatal, reactor, role=role)
    uploads = None
    if group is None:
        group = StreamGroup(stream, bridge)
        #: What the users' servers granted (XEP-0356), and the contacts put in rosters (gateway/xmpp/roster.py).
        group.grants = Grants()
        group.roster = (RosterKeeper(group, bridge, group.grants, component.roster, component.roster_group)
                        if component.roster != "off" else None)
        bridge.attach(StanzaOutput(group, bridge.adapter, group.roster, pacing=xmpp_settings, clock=reactor))
        if attachments and attachments.get("upload") and bridge.fetcher is not None:
            # XEP-0363 through the primary connection (gateway/xmpp/upload.py).
            uploads = UploadHandler(stream, bridge.fetcher, lambda: stream.allowed_domains,
                                    attachments["upload_timeout"], reactor)
            bridge.attach_uploads(uploads)
    stream.group = group
    roster = group.roster
    disco_info = GatewayDisco(component.domain, component.name, bridge.adapter,
                              archive=getattr(bridge, "archive", None) is not None)
    presence = PresenceHandler(stream, bridge, disco_info, roster)
    stream.pinger = PingHandler(component.domain, xmpp_settings["ping_interval"], xmpp_settings["ping_timeout"],
                                reactor)
    commands = CommandsHandler(stream, bridge, presence, gateway_settings["admins"], reactor)
    if roster is not None:
        commands.commands[ImportContactsCommand.node] = ImportContactsCommand(commands, roster)
    for handler in (
        DiscoHandler(),
        disco_info,
        VersionHandler(),
        stream.pinger,
        presence,
        PrivilegeHandler(component.domain, group.grants, roster),
        RegisterHandler(stream, bridge, presence, roster),
        GatewayIQHandler(component.domain, bridge),
        commands,
        MUCHandler(stream, bridge),
        RoomListHandler(stream, bridge),
        RoomConfigHandler(stream, bridge),
        ModerationHandler(stream, bridge),
        MAMHandler(stream, bridge),
        RawCommandHandler(stream, bridge),
        MessageHandler(stream, bridge, roster),
        BridgeLink(group, stream),
        *([uploads] if uploads is not None else []),
    ):
        handler.setHandlerParent(stream)
    stream.presence = presence
    return stream


def spare_keeper(primary, component, xmpp_settings: dict, gateway_settings: dict, bridge, on_fatal,
                 reactor) -> SpareKeeper | None:
    """The spare connections of ``primary``'s domain, if ``spare_connection_interval`` is set."""
    interval = xmpp_settings.get("spare_connection_interval", 0.0)
    if interval <= 0:
        return None
    if xmpp_settings.get("slot_probe_timeout", 0.0) <= 0:
        log.warn("component {domain}: spare_connection_interval needs the slot probe (slot_probe_timeout > 0) to "
                 "tell a spare with a slot from one without; no spare connections", domain=component.domain)
        return None

    def build():
        return build_component(component, xmpp_settings, gateway_settings, bridge, on_fatal, reactor,
                               group=primary.group, role="spare")

    return SpareKeeper(primary.group, build, interval, reactor)
