"""
XEP-0050 ad-hoc commands on the component domain.

Users: ``settings`` (the adapter's per-user options; ``configure`` is biboumi's
name for it), ``unregister``, ``hello`` and ``ping``. Admins
(``gateway.admins``): ``list-users``, ``stats``, ``delete-user``, ``reload``,
``status-page`` (a one-time link to the web status page). Networks with
connections (IConnections) add gateway/xmpp/connections.py's commands.
Each command is a small class with a first step (usually a form) and a
completion step; sessions live in memory and expire.
"""

from __future__ import annotations

import time
import uuid

from twisted.internet import defer
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from zope.interface import implementer

from gateway.interfaces import IAddressSettings
from gateway.model import Field, GatewayError
from gateway.xmpp.forms import FormError, build_form, checked_submission, result_form, submitted_form
from gateway.xmpp.command_base import NS_COMMANDS, Command, Done
from gateway.xmpp.connections import CONNECTION_COMMANDS, ConnectionInfoCommand
from gateway.xmpp.register import stanza_error
from gateway.xmpp.escaping import unescape
from gateway.xmpp.stanzas import parse_jid
from wokkel import disco
from wokkel.iwokkel import IDisco
from gateway.xmpp.handler import ComponentHandler
from wokkel.subprotocols import IQHandlerMixin

SESSION_TTL = 600.0
#: Open command sessions one user may hold; starting another ends their oldest.
MAX_SESSIONS_PER_USER = 10


class SettingsCommand(Command):
    node = "settings"
    name = "Settings"
    needs_registration = True

    @defer.inlineCallbacks
    def start(self, user):
        reg = yield self.bridge.registration(user)
        fields = self.bridge.settings_fields
        values = {f.var: f.default for f in fields if f.default is not None}
        return build_form(fields, {**values, **reg.settings}, NS_COMMANDS, title=f"Settings on {self.handler.domain}")

    @defer.inlineCallbacks
    def complete(self, user, values):
        reg = yield self.bridge.update_settings(user, values)
        labels = {f.var: f.label for f in self.bridge.settings_fields}
        rows = {labels.get(k, k): v for k, v in reg.settings.items() if k in labels}
        raise Done("Settings saved.", result_form(None, "Settings", rows))


class UnregisterCommand(Command):
    node = "unregister"
    name = "Unregister"
    needs_registration = True

    def start(self, user):
        return build_form([Field("confirm", "Delete my registration and all data stored for me",
                                 type="boolean", required=True)], {"confirm": False}, NS_COMMANDS,
                          title="Unregister")

    @defer.inlineCallbacks
    def complete(self, user, values):
        if str(values.get("confirm", "")).lower() not in ("1", "true"):
            raise Done("Nothing changed: you did not confirm.")
        yield self.bridge.unregister(user)
        self.handler.presence.on_unregistered(user)
        raise Done("You are unregistered; everything stored for you is deleted.")


class ListUsersCommand(Command):
    node = "list-users"
    name = "List registered users"
    admin = True

    @defer.inlineCallbacks
    def start(self, user):
        regs = yield self.bridge.registry.list_registrations(self.handler.domain)
        rows = {"registered users": [r.jid for r in regs], "count": len(regs)}
        raise Done(f"{len(regs)} registered user(s).", result_form(None, "Registered users", rows))


class StatsCommand(Command):
    node = "stats"
    name = "Statistics"
    admin = True

    @defer.inlineCallbacks
    def start(self, user):
        stats = yield self.bridge.stats()
        raise Done("Statistics for " + self.handler.domain, result_form(None, "Statistics", stats))


class DeleteUserCommand(Command):
    node = "delete-user"
    name = "Delete a user"
    admin = True

    def start(self, user):
        return build_form([Field("jid", "User to delete (bare JID)", type="jid-single", required=True)], {},
                          NS_COMMANDS, title="Delete a user")

    @defer.inlineCallbacks
    def complete(self, user, values):
        target = parse_jid(str(values.get("jid", "")).strip())
        if target is None or not target.user:
            raise StanzaError("bad-request", text="give a bare JID such as user@example.org")
        found = yield self.bridge.unregister(target.userhost())
        if not found:
            raise Done(f"{target.userhost()} was not registered.")
        self.handler.presence.on_unregistered(target.userhost())
        raise Done(f"{target.userhost()} is deleted.")


class ConfigureAddressCommand(Command):
    """
    Settings for one foreign address (an IRC server: nick, password, SASL, TLS...),
    on that address's JID, as biboumi offers them. The adapter declares the fields.
    """

    node = "configure"
    name = "Configure"

    def __init__(self, handler, address: str):
        super().__init__(handler)
        self.address = address
        self.adapter = handler.bridge.adapter

    @staticmethod
    def applies(adapter, address: str, user: str) -> bool:
        return IAddressSettings.providedBy(adapter) and bool(adapter.address_fields(address))

    @defer.inlineCallbacks
    def start(self, user):
        reg = yield self.bridge.ensure_registration(user)
        if reg is None:
            raise StanzaError("registration-required", "auth", f"register with {self.handler.domain} first")
        fields = list(self.adapter.address_fields(self.address))
        values = self.adapter.address_values(reg, self.address)
        return build_form(fields, values, NS_COMMANDS, title=f"Settings for {self.address}")

    @defer.inlineCallbacks
    def complete(self, user, values):
        yield self.bridge.update_address_settings(user, self.address, values)
        raise Done(f"Settings for {self.address} saved.")


class StatusPageCommand(Command):
    """A one-time link to the web status page: admins are proven by their XMPP server, no password."""

    node = "status-page"
    name = "Status page"
    admin = True

    def start(self, user):
        from gateway.web.status import LOGINS, TOKEN_TTL

        if not LOGINS.base_url:
            raise Done("The status page is off: this gateway has no web listener (web.listen).")
        link = LOGINS.link_for(user)
        raise Done(f"Open this link within {int(TOKEN_TTL // 60)} minutes; it works once: {link}",
                   result_form(None, "Status page", {"link": link}))


class HelloCommand(Command):
    """biboumi's: a two-step command that greets, for trying a client's ad-hoc support."""

    node = "hello"
    name = "Say hello"

    def start(self, user):
        return build_form([Field("name", "Your name", required=True)], {}, NS_COMMANDS, title="Hello")

    def complete(self, user, values):
        raise Done(f"Hello {str(values.get('name', '')).strip()[:100]}!")


class PingCommand(Command):
    node = "ping"
    name = "Ping"

    def start(self, user):
        raise Done("Pong")


class ConfigureCommand(SettingsCommand):
    """biboumi's name for the user's settings on the gateway JID."""

    node = "configure"
    name = "Configure"


class ReloadCommand(Command):
    """What SIGHUP does (gateway/reload.py), for admins without a shell on the gateway's machine."""

    node = "reload"
    name = "Reload the configuration"
    admin = True

    def start(self, user):
        from gateway.reload import HOOKS

        hook = HOOKS.get("reload")
        if hook is None:
            raise Done("This gateway was not started with `xmpp-gateway run`: reload it with SIGHUP.")
        if hook():
            raise Done("Configuration reloaded (what needs a restart is named in the log).")
        raise Done("The configuration was refused and nothing changed: the log says which lines are wrong.")


COMMANDS = [SettingsCommand, ConfigureCommand, UnregisterCommand, HelloCommand, PingCommand, ListUsersCommand,
            StatsCommand, DeleteUserCommand, StatusPageCommand, ReloadCommand, *CONNECTION_COMMANDS]
#: Commands on a foreign address's JID, each offered where it ``applies``.
ADDRESS_COMMANDS = [ConfigureAddressCommand, ConnectionInfoCommand]


@implementer(IDisco)
class CommandsHandler(ComponentHandler, IQHandlerMixin):
    iqHandlers = {f"/iq[@type='set']/command[@xmlns='{NS_COMMANDS}']": "on_command"}

    def __init__(self, stream, bridge, presence, admins: list[str], clock):
        super().__init__(stream, bridge)
        self.presence = presence
        self.set_admins(admins)
        self.clock = clock
        self.commands = {c.node: c(self) for c in COMMANDS if c.offered(bridge.adapter)}
        #: session id -> (user, node, started, the form offered (checked against what comes back) or None)
        self.sessions: dict[str, tuple[str, str, float, object]] = {}

    def set_admins(self, admins: list[str]) -> None:
        self.admins = frozenset(a.lower() for a in admins)

    def connectionInitialized(self):
        self.xmlstream.addObserver(f"/iq[@type='set']/command[@xmlns='{NS_COMMANDS}']", self.handleRequest)

    def _allowed(self, user: str, command: Command) -> bool:
        return not command.admin or user.lower() in self.admins

    # -- disco ------------------------------------------------------------

    def _address_commands(self, target: JID, user: str) -> tuple[str | None, dict[str, type]]:
        """The foreign address behind ``target`` and the commands its JID offers ``user``."""
        adapter = self.bridge.adapter
        if not target.user:
            return None, {}
        try:
            address = adapter.normalize_address(unescape(target.user))
        except Exception:
            return None, {}
        return address, {c.node: c for c in ADDRESS_COMMANDS if c.applies(adapter, address, user)}

    def getDiscoInfo(self, requestor: JID, target: JID, nodeIdentifier: str = ""):
        if target.user:
            found = self._address_commands(target, requestor.userhost())[1].get(nodeIdentifier)
            if found is None:
                return []
            return [disco.DiscoIdentity("automation", "command-node", found.name),
                    disco.DiscoFeature(NS_COMMANDS), disco.DiscoFeature("jabber:x:data")]
        command = self.commands.get(nodeIdentifier)
        if target.user or command is None or not self._allowed(requestor.userhost(), command):
            return []
        return [disco.DiscoIdentity("automation", "command-node", command.name),
                disco.DiscoFeature(NS_COMMANDS), disco.DiscoFeature("jabber:x:data")]

    def getDiscoItems(self, requestor: JID, target: JID, nodeIdentifier: str = ""):
        if nodeIdentifier != NS_COMMANDS:
            return []
        if target.user:
            return [disco.DiscoItem(target, c.node, c.name)
                    for c in self._address_commands(target, requestor.userhost())[1].values()]
        user = requestor.userhost()
        return [disco.DiscoItem(JID(self.domain), c.node, c.name)
                for c in self.commands.values() if self._allowed(user, c)]

    # -- execution --------------------------------------------------------

    def _reply(self, node: str, session: str, status: str, form=None, note: str | None = None,
               actions: bool = False):
        el = domish.Element((NS_COMMANDS, "command"))
        el["node"] = node
        el["sessionid"] = session
        el["status"] = status
        if actions:
            acts = el.addElement("actions")
            acts["execute"] = "complete"
            acts.addElement("complete")
        if note:
            n = el.addElement("note", content=note)
            n["type"] = "info"
        if form is not None:
            el.addChild(form.toElement())
        return el

    @defer.inlineCallbacks
    def on_command(self, iq):
        cmd = next(iq.elements(NS_COMMANDS, "command"))
        node = cmd.getAttribute("node", "")
        action = cmd.getAttribute("action", "execute")
        session = cmd.getAttribute("sessionid")
        user = parse_jid(iq["from"]).userhost()
        target = parse_jid(iq.getAttribute("to"))
        if target is not None and target.user:
            address, offered = self._address_commands(target, user)
            command = offered[node](self, address) if node in offered else None
            node_key = f"{node}@{address}"
        else:
            command = self.commands.get(node)
            node_key = node
        if command is None:
            raise StanzaError("item-not-found", text=f"no command {node!r}")
        if not self._allowed(user, command):
            raise StanzaError("forbidden", text="only the gateway's administrators may run this command")
        if command.needs_registration and (yield self.bridge.registration(user)) is None:
            raise StanzaError("registration-required", "auth", f"register with {self.domain} first")
        self._expire()
        try:
            if session is None:
                session = uuid.uuid4().hex
                form = yield defer.maybeDeferred(command.start, user)
                self._open(session, user, node_key, form)
                return self._reply(node, session, "executing", form, actions=True)
            known = self.sessions.pop(session, None)
            if known is None or known[:2] != (user, node_key):
                raise StanzaError("bad-request", text="unknown or expired session",
                                  appCondition=domish.Element((NS_COMMANDS, "bad-sessionid")))
            if action == "cancel":
                return self._reply(node, session, "canceled")
            x = submitted_form(cmd)
            values = {}
            if x is not None:
                if known[3] is None:
                    raise StanzaError("bad-request", text="this command takes no form")
                try:
                    values = checked_submission(x, known[3])
                except FormError as e:
                    # The session stays open: the user may correct the form and submit again.
                    self.sessions[session] = known
                    raise StanzaError(e.condition, text=e.text)
            yield defer.maybeDeferred(command.complete, user, values)
            return self._reply(node, session, "completed", note="Done.")
        except Done as done:
            return self._reply(node, session or uuid.uuid4().hex, "completed", done.form, done.note)
        except GatewayError as e:
            raise stanza_error(e)

    def _open(self, session: str, user: str, node_key: str, form) -> None:
        """Remember a session; a user's sessions are bounded (a client looping on execute cannot grow memory)."""
        mine = [key for key, known in self.sessions.items() if known[0] == user]
        for key in mine[:max(0, len(mine) - MAX_SESSIONS_PER_USER + 1)]:
            del self.sessions[key]            # dicts keep insertion order: the oldest first
        self.sessions[session] = (user, node_key, time.monotonic(), form)

    def _expire(self) -> None:
        now = time.monotonic()
        for key, (_, _, started, _) in list(self.sessions.items()):
            if now - started > SESSION_TTL:
                del self.sessions[key]
