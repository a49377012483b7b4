"""
Ad-hoc commands for networks that keep connections per user (IConnections:
IRC), as biboumi has them: ``disconnect-from-irc-servers`` for users,
``disconnect-user`` for admins, and ``get-irc-connection-info`` on a server's
JID. The node names are biboumi's, so its users' habits carry over.
"""

from __future__ import annotations

import datetime

from twisted.words.protocols.jabber.error import StanzaError

from gateway.interfaces import IConnections
from gateway.model import Field
from gateway.xmpp.command_base import NS_COMMANDS, Command, Done
from gateway.xmpp.forms import build_form, result_form
from gateway.xmpp.stanzas import parse_jid


def _since(info) -> str:
    if not info.connected or not info.since:
        return "not connected (trying)"
    stamp = datetime.datetime.fromtimestamp(info.since, datetime.timezone.utc)
    return f"connected since {stamp.strftime('%Y-%m-%d %H:%M:%S UTC')}"


def _describe(info) -> str:
    return (f"{info.address}: {_since(info)}, as {info.nick}, to {info.host} port {info.port} "
            f"{'with' if info.tls else 'without'} TLS")


class _ConnectionCommand(Command):
    @staticmethod
    def offered(adapter) -> bool:
        return IConnections.providedBy(adapter)


class DisconnectFromServersCommand(_ConnectionCommand):
    node = "disconnect-from-irc-servers"
    name = "Disconnect from servers"

    def start(self, user):
        mine = self.bridge.adapter.connections(user)
        if not mine:
            raise Done("You have no connection to close.")
        field = Field("servers", "Servers to disconnect from", type="list-multi",
                      options=tuple(i.address for i in mine), required=True)
        return build_form([field, Field("reason", "Quit message")], {"servers": [i.address for i in mine],
                                                                      "reason": "Disconnected by the user"},
                          NS_COMMANDS, title="Disconnect from servers")

    def complete(self, user, values):
        chosen = values.get("servers") or []
        chosen = [chosen] if isinstance(chosen, str) else list(chosen)
        reason = str(values.get("reason") or "Disconnected by the user")
        closed = sum(self.bridge.adapter.disconnect(user, address, reason) for address in chosen)
        raise Done(f"{closed} connection(s) closed.")


class DisconnectUserCommand(_ConnectionCommand):
    node = "disconnect-user"
    name = "Disconnect a user from every server"
    admin = True

    def start(self, user):
        return build_form([Field("jid", "User (bare JID)", type="jid-single", required=True),
                           Field("reason", "Quit message")], {"reason": "Disconnected by an administrator"},
                          NS_COMMANDS, title="Disconnect a user")

    def complete(self, user, values):
        target = parse_jid(str(values.get("jid", "")).strip())
        if target is None or not target.user:
            raise StanzaError("bad-request", text="give a bare JID such as user@example.org")
        closed = self.bridge.adapter.disconnect(target.userhost(), None,
                                                str(values.get("reason") or "Disconnected by an administrator"))
        raise Done(f"{target.userhost()}: {closed} connection(s) closed.")


class ConnectionInfoCommand(Command):
    """On a server's JID: the user's connection to it."""

    node = "get-irc-connection-info"
    name = "Connection information"

    def __init__(self, handler, address: str):
        super().__init__(handler)
        self.address = address

    @staticmethod
    def applies(adapter, address: str, user: str) -> bool:
        return IConnections.providedBy(adapter) and adapter.is_server(address)

    def start(self, user):
        found = [i for i in self.bridge.adapter.connections(user) if i.address == self.address]
        if not found:
            raise Done(f"You are not connected to {self.address}.")
        info = found[0]
        raise Done(_describe(info), result_form(None, f"Connection to {self.address}", {
            "server": info.address, "host": info.host, "port": info.port, "tls": info.tls, "nick": info.nick,
            "state": _since(info)}))


CONNECTION_COMMANDS = [DisconnectFromServersCommand, DisconnectUserCommand]

__all__ = ["CONNECTION_COMMANDS", "ConnectionInfoCommand"]
