"""
IRC channels as XEP-0045 group chats, with biboumi's addresses:
``#chan%irc.example.net@irc.example.org/Nick`` joins a channel, ``nick%irc.example.net``
is a person, ``irc.example.net`` the server. Each user gets one IRC connection per
server, shared by all their XMPP resources.
"""

from __future__ import annotations

import codecs
import dataclasses
import re
from typing import Any

from twisted.internet import defer, endpoints
from twisted.logger import Logger
from zope.interface import implementer

from gateway import metrics
from gateway.adapters.base import AdapterBase
from gateway.adapters.irc import raw, text
from gateway.adapters.irc.identd import IdentFactory, IdentTable, ident_token, webirc_address
from gateway.adapters.irc.scheduler import ConnectScheduler
from gateway.adapters.irc.heartbeat import HeartbeatWheel
from gateway.adapters.irc.session import TYPING_OUT, Backlog, IRCSession
from gateway.interfaces import (NOT_NOW, IAddressSettings, IConnections, IConnectionStatus, IContactNames,
                                ICorrections, IGroupChat, IHealthReport, IHostsRooms, IModeration, IRawCommands,
                                IReactions, IReplies, IRoomArchive, IRoomDirectory, ISendNow, ITyping)
from gateway.model import (AddressError, ConnectionInfo, Field, GatewayError, Occupancy, OutboundMessage, PermanentFailure,
                           PolicyViolation, Registration, RegistrationError, SendResult)
from gateway.options import Option, endpoint, non_negative, positive


def port_number(value) -> int | None:
    """
    A port typed by a user (ASCII digits, 1-65535), or None. ``str.isdigit`` is
    not enough: it accepts "²", which ``int`` cannot read.
    """
    value = str(value if value is not None else "").strip()
    if value.isascii() and value.isdigit() and 0 < int(value) < 65536:
        return int(value)
    return None


def _ports(value) -> str | None:
    if not all(isinstance(p, int) and 0 < p < 65536 for p in value):
        return "ports are whole numbers from 1 to 65535"
    return None

log = Logger(namespace="gateway.adapters.irc")

#: Any name a server may allow: no space, comma or BEL (the IRC grammar's own
#: limits), no % (our server separator). ':' and '@' are allowed (InspIRCd has
#: them; XEP-0106 escapes them in the room's JID).
_CHANNEL = re.compile(r"^[#&+!][^\s,\x07%]{1,199}$")
_NICK = re.compile(r"^[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]{0,29}$")
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")
#: A connect command that carries a password: what follows the keyword is masked in forms.
_SECRET_COMMAND = re.compile(r"^(.*?\b(?:IDENTIFY|AUTH|AUTHENTICATE|LOGIN|PASS|OPER|REGISTER|GHOST|RECOVER|RELEASE)"
                             r"\b:?\s*)(\S.*)$", re.IGNORECASE)
MASK = "********"
#: What an operator may set per server in ``servers``.
SERVER_KEYS = frozenset({"host", "port", "tls", "verify", "webirc_password", "webirc_gateway", "webirc_host",
                         "webirc_ip"})
_WEBIRC_WORD = re.compile(r"^[A-Za-z0-9._-]{1,63}$")
_WEBIRC_HOST = re.compile(r"^(?=.{1,52}$)[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_WEBIRC_PASSWORD = re.compile(r"^[!-~]{1,200}$")


def _ip(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return not value.startswith(":")              # a leading ":" would start IRC's trailing parameter


def mask_command(command: str) -> str:
    """A connect command as a form shows it: the part after a password keyword hidden."""
    m = _SECRET_COMMAND.match(command)
    return m.group(1) + MASK if m else command


#: Bounds of IRCAdapter.normalize_address's memory: entries, and characters of an address kept.
NORMALIZED = 4096
MAX_ADDRESS = 256


def _lines_sent(lines: int) -> SendResult:
    notice = None
    if lines > 1:
        notice = (f"sent as {lines} IRC lines: IRC carries a few hundred bytes per line, and each line of your "
                  "message is a line of its own")
    return SendResult(parts=lines, split_notice=notice)


@implementer(IGroupChat, IModeration, IRoomDirectory, IAddressSettings, IRawCommands, IConnectionStatus,
             IConnections, IHostsRooms, IHealthReport, IRoomArchive, ICorrections, IReplies, IReactions, ITyping,
             IContactNames, ISendNow)
class IRCAdapter(AdapterBase):
    name = "irc"
    gateway_type = "irc"
    display_name = "IRC gateway"
    features: frozenset[str] = frozenset()
    room_identity_type = "irc"
    occupants_visible = True    # nick!user@host is there for anyone to see (WHO, WHOIS)
    pipelining = True           # one socket: lines leave in the order they were queued
    auto_register = True        # like biboumi: join a channel, no registration form
    address_prompt = "IRC address: #channel%server, nick%server or server"
    instructions = "No registration needed: join #channel%irc.server.example@this-service/YourNick."
    options = [
        Option("allowed_servers", list, [], item_type=str,
               doc="IRC servers users may reach (host names as in addresses); empty: any."),
        Option("fixed_server", str, "",
               doc="Serve one IRC server only: rooms are `#chan@component`, people `nick@component` "
                   "(no %server). The server's own JID stays `server@component`."),
        Option("servers", dict, {}, secret_fields=("webirc_password",),
               doc="Per-server connection settings: `{ \"irc.example.net\" = { host = \"...\", port = 6697, "
                   "tls = true, verify = true } }`; default port 6697 with TLS verified. With the network's "
                   "consent, WEBIRC: `webirc_password` (*secret*: inline, `{ env = \"NAME\" }` or "
                   "`{ file = \"/path\" }`), `webirc_gateway` (the gateway name the network gave, default "
                   "`xmpp-gateway`), `webirc_host` (suffix of each user's host, default the component's domain: "
                   "`<token>.<suffix>`) and `webirc_ip` (default: a per-user address in `fd00::/8`; see docs/irc.md)."),
        Option("fallback_encoding", str, "latin-1", doc="Charset for incoming lines that are not UTF-8."),
        Option("throttle_rate", float, 2.0, check=non_negative,
               doc="Lines per second each connection may send after a burst; 0: no throttle."),
        Option("throttle_burst", int, 10, check=positive, doc="Lines a connection may send at once."),
        Option("default_role", str, "participant", choices=("participant", "visitor"),
               doc="XEP-0045 role of occupants without channel modes."),
        Option("persistent", bool, False, doc="Keep connections when users leave every room."),
        Option("idle_timeout", float, 0.0, check=non_negative,
               doc="Seconds a user's IRC connection may stay open with none of their XMPP clients in any of its "
                   "rooms (after leaving, or going offline; `persistent` ones included, and ones opened for "
                   "private messages); then it is closed (QUIT). 0: never."),
        Option("reconnect_max_delay", float, 60.0, check=positive,
               doc="Longest delay between attempts to connect; the delay doubles from 1 s after each failed "
                   "attempt, with jitter, and every attempt still waits for its turn (`connect_rate`)."),
        Option("connect_concurrency", int, 4, check=positive,
               doc="Attempts to connect to one IRC server (host and port) in flight at once, from TCP connect to "
                   "the welcome, over all users; the others wait in line (round robin between users, users with "
                   "an XMPP client online first)."),
        Option("connect_rate", float, 5.0, check=non_negative,
               doc="Attempts to connect to one IRC server per second, over all users, at most (evenly spaced); "
                   "0: no limit. A server restarting with thousands of users joined becomes a paced queue."),
        Option("max_connections_per_server", int, 0, check=non_negative,
               doc="Connections to one IRC server this gateway holds at most (signed on or connecting); 0: no "
                   "cap. Beyond it users wait in line and are told (resource-constraint, their place in line)."),
        Option("connect_backlog_limit", int, 5000, check=non_negative,
               doc="Room events waiting toward XMPP (the paced room queue, or held while the component stream "
                   "is down) above which no new connection attempt starts, at any server, until the queue is "
                   "back under it: a reconnect storm cannot grow the heap faster than the stream drains. "
                   "0: no bound."),
        Option("connect_timeout", float, 15.0, check=positive,
               doc="Seconds a TCP (and TLS) connect may take; then the attempt is dropped and retried."),
        Option("notify_after", float, 30.0, check=positive,
               doc="Seconds users may wait for a connection (in line, or reconnecting after a loss) before the "
                   "room tells them why; a join whose attempt fails is told at once. They are told again once in."),
        Option("allow_private", bool, False,
               doc="Let users reach IRC servers on loopback, private (RFC 1918, fc00::/7), link-local, multicast, "
                   "unspecified or reserved addresses. Off, a user-chosen host is resolved and refused if any of "
                   "its addresses is one of these; `servers` and `fixed_server` are trusted either way."),
        Option("allowed_ports", list, [6667, 6697, 7000, 7070], item_type=int, check=_ports,
               doc="Ports users may connect to (in an address like `irc.example.net:6697` or their own "
                   "port setting); the operator's `servers` entries keep their configured port."),
        Option("max_sessions_per_user", int, 5, check=positive,
               doc="IRC servers one user may be connected to at once; one more is refused (policy-violation)."),
        Option("max_rooms_per_user", int, 50, check=positive,
               doc="Channels one user may be in at once, over all servers; one more is refused (policy-violation)."),
        Option("max_names", int, 10000, check=positive,
               doc="Occupants kept per channel. A longer NAMES reply ends the join with the first ones and a "
                   "notice that the list was cut; later joiners beyond it are not shown."),
        Option("max_list", int, 5000, check=positive,
               doc="Channels kept from a server's LIST; beyond, the room list is answered at once, cut, with an "
                   "item saying so."),
        Option("list_timeout", float, 30.0, check=positive,
               doc="Seconds to wait for the end of a server's LIST before the room list request fails."),
        Option("registration_timeout", float, 30.0, check=positive,
               doc="Seconds a server may take to let us sign on (CAP, SASL, welcome) once connected; then the "
                   "connection is dropped and the attempt retried, and joins waiting on it get "
                   "remote-server-timeout (they complete when a later attempt is welcomed)."),
        Option("identd_listen", str, "", check=endpoint,
               doc="Twisted endpoint of the built-in ident server (RFC 1413), e.g. `tcp:113:interface=0.0.0.0`; "
                   "empty: none. It answers IRC servers' queries about the gateway's own connections with each "
                   "user's token (also sent as the IRC user name), so servers show no `~`. Port 113 needs "
                   "`CAP_NET_BIND_SERVICE` (drop-in `xmpp-gateway example-config systemd-port-113`) or a redirect."),
        Option("identd_max_connections", int, 100, check=positive,
               doc="Ident connections open at once (each gets 10 s for its one query, 16 at most per peer "
                   "address); more are closed at once."),
        Option("ident_salt", str, "", secret=True,
               doc="Key of the per-user ident token instead of one derived from `registry.secret_key`: set it "
                   "to keep the tokens (and the bans networks put on them) when that key changes."),
    ]

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> list[tuple[str, str]]:
        problems = []
        fixed, allowed = opts.get("fixed_server"), opts.get("allowed_servers") or []
        if fixed and allowed and fixed not in allowed:
            problems.append(("fixed_server", f"{fixed} is not in allowed_servers"))
        for name, conf in (opts.get("servers") or {}).items():
            if not isinstance(conf, dict) or set(conf) - SERVER_KEYS:
                problems.append(("servers", f"{name}: only {', '.join(sorted(SERVER_KEYS))} may be set"))
                continue
            if conf.get("webirc_ip") and not _ip(conf["webirc_ip"]):
                problems.append(("servers", f"{name}: webirc_ip {conf['webirc_ip']!r} is not an IP address"))
            if "webirc_gateway" in conf and not (isinstance(conf["webirc_gateway"], str)
                                                 and _WEBIRC_WORD.match(conf["webirc_gateway"])):
                problems.append(("servers", f"{name}: webirc_gateway must be letters, digits, dots, dashes or "
                                            f"underscores (at most 63)"))
            if "webirc_host" in conf and not (isinstance(conf["webirc_host"], str)
                                              and _WEBIRC_HOST.match(conf["webirc_host"])):
                problems.append(("servers", f"{name}: webirc_host must be a host name (letters, digits, dots, "
                                            f"dashes; at most 52 characters, for <token>.<host> to fit in 63)"))
            if "webirc_password" in conf and not _WEBIRC_PASSWORD.match(conf["webirc_password"]):
                problems.append(("servers", f"{name}: webirc_password must be printable, without spaces"))
        return problems

    def __init__(self, options: dict[str, Any], context):
        super().__init__(options, context)
        self.sessions: dict[tuple[str, str], IRCSession] = {}
        #: The same sessions by server, then user.
        self._by_server: dict[str, dict[str, IRCSession]] = {}
        #: The same sessions by user, then server: the per-user limits are checked on every join,
        #: and a scan of every session made N joins cost N² (10,000 users: 10⁸ steps).
        self._by_user: dict[str, dict[str, IRCSession]] = {}
        #: Kept by the adapter, not the session: a session may be replaced while messages wait for retries.
        self.backlog = Backlog(context.clock)
        #: Every connection attempt of every user, to every server, is drawn from this one scheduler.
        self.scheduler = ConnectScheduler(context.clock, concurrent=options.get("connect_concurrency", 4),
                                          rate=options.get("connect_rate", 5.0),
                                          max_connections=options.get("max_connections_per_server", 0),
                                          backlog=context.room_backlog,
                                          backlog_limit=options.get("connect_backlog_limit", 5000))
        scheduler = self.scheduler
        #: Open connections by port pair, for the identd; None when the identd is off.
        self.ident_table: IdentTable | None = IdentTable() if options.get("identd_listen") else None
        #: One keepalive timer per PING interval for all connections, not a LoopingCall each (heartbeat.py).
        self._wheels: dict[float, HeartbeatWheel] = {}
        self._ident_port = None
        self._problems: list[str] = []
        #: normalize_address's answers for addresses it took (every room message asks for its room):
        #: at most NORMALIZED entries of at most MAX_ADDRESS characters; refused addresses are not kept.
        self._normalized: dict[str, str] = {}
        metrics.IRC_CONNECT_WAITING.labels(context.component).set_function(
            lambda: sum(h.waiting for h in scheduler.hosts.values()))
        metrics.IRC_CONNECT_IN_FLIGHT.labels(context.component).set_function(
            lambda: sum(len(h.attempting) for h in scheduler.hosts.values()))

    def occupancy(self):
        for session in list(self.sessions.values()):
            if session.closed:
                continue
            for room in session.rooms.values():
                if room.resources:
                    yield Occupancy(session.user, tuple(room.resources), session.room_address(room.channel),
                                    text.clean_name(session.nick))

    @defer.inlineCallbacks
    def startService(self):
        super().startService()
        listen = self.config.get("identd_listen")
        if not listen:
            return
        factory = IdentFactory(self.ident_table, self.context.clock, self.config.get("identd_max_connections", 100))
        try:
            self._ident_port = yield endpoints.serverFromString(self.context.clock, listen).listen(factory)
        except Exception as e:
            # IRC still works (users show as ~token); /healthz says what does not (IHealthReport).
            self._problems.append(f"identd listener {listen}: {e}")
            log.error("identd: listener {listen} failed: {error}", listen=listen, error=e)
            return
        log.info("identd on {listen}", listen=listen)

    def problems(self) -> list[str]:
        return list(self._problems)

    def _token_key(self) -> bytes:
        salt = self.config.get("ident_salt") or ""
        return salt.encode("utf-8") if salt else (getattr(self.context, "token_key", b"") or b"")

    def ident_token(self, jid: str) -> str:
        """The user's stable token: their ident answer and IRC user name while the identd is on."""
        return ident_token(self._token_key(), jid)

    def webirc_line(self, server: str, jid: str) -> str | None:
        """
        ``WEBIRC <password> <gateway> <host> <ip>`` for the server's operator settings, or None. We do
        not know an XMPP user's address: the host is ``<token>.<webirc_host>`` (the user's ident token
        under the component's domain by default) and the IP a per-user address in ``fd00::/8`` (unique
        local, routed nowhere), so the network's per-host bans and per-IP limits apply to one user each,
        without learning who they are (docs/irc.md).
        """
        conf = (self.config["servers"] or {}).get(server) or {}
        password = conf.get("webirc_password")
        if not password:
            return None
        token = self.ident_token(jid)
        suffix = conf.get("webirc_host") or self.context.component
        host = f"{token}.{suffix}"
        if len(host) > 63:                            # HOSTLEN on most servers: a longer host is refused
            host = f"{token}.xmpp"
        ip = conf.get("webirc_ip") or webirc_address(self._token_key(), jid)
        return f"WEBIRC {password} {conf.get('webirc_gateway') or 'xmpp-gateway'} {host} {ip}"

    def heartbeat_wheel(self, interval: float) -> HeartbeatWheel:
        """The one keepalive wheel of this adapter for PINGs every ``interval`` seconds."""
        wheel = self._wheels.get(interval)
        if wheel is None:
            wheel = self._wheels[interval] = HeartbeatWheel(self.context.clock, interval)
        return wheel

    def stopService(self):
        self.scheduler.concurrent = 0          # a session closing frees a place: no other attempt may start now
        for session in list(self.sessions.values()):
            session.close("Gateway shutting down")
        super().stopService()
        port, self._ident_port = self._ident_port, None
        if port is not None:
            return port.stopListening()
        return None

    # -- addresses ----------------------------------------------------------------

    def normalize_address(self, text_: str) -> str:
        found = self._normalized.get(text_)
        if found is not None:
            return found                       # a pure function of the address and the (fixed) options
        result = self._normalize(text_)
        if type(text_) is str and len(text_) <= MAX_ADDRESS:
            if len(self._normalized) >= NORMALIZED:
                self._normalized.clear()       # a peer inventing addresses only makes us start again
            self._normalized[text_] = result
        return result

    def _normalize(self, text_: str) -> str:
        raw = (text_ or "").strip()
        fixed = self.config["fixed_server"]
        if fixed and "%" not in raw and (_CHANNEL.match(raw) or _NICK.match(raw)):
            raw = f"{raw}%{fixed}"
        local, sep, server = raw.rpartition("%")
        if not sep:
            local, server = "", raw
        server = server.lower()
        if not _HOST.match(server) or "." not in server and server.partition(":")[0] != "localhost":
            raise AddressError(f"{server!r} is not an IRC server name")
        allowed = self.config["allowed_servers"]
        if allowed and server not in allowed:
            raise AddressError(f"{server} is not one of the IRC servers this gateway serves", "not-allowed")
        if not local:
            return server
        if _CHANNEL.match(local):
            return f"{local.lower()}%{server}"
        if _NICK.match(local):
            return f"{local.lower()}%{server}"
        raise AddressError(f"{local!r} is neither a channel (#name) nor a nickname")

    def is_room(self, address: str) -> bool:
        """A channel address by its shape (#, &, + or ! first, then %server unless the server is fixed)."""
        return address[:1] in "#&+!" and ("%" in address or bool(self.config["fixed_server"]))

    def jid_localpart(self, address: str) -> str:
        fixed = self.config["fixed_server"]
        if fixed and address.endswith("%" + fixed):
            return address[: -len(fixed) - 1]
        return address

    def is_server(self, address: str) -> bool:
        return "%" not in address

    def list_rooms(self, registration: Registration, server: str) -> defer.Deferred:
        """[(room address, "#chan (12): topic")] from the server's LIST."""
        return self.session(registration, server).list_channels()

    def room_name(self, room: str) -> str:
        channel, _, server = room.rpartition("%")
        return f"{channel} on {server}"

    def contact_name(self, address: str) -> str:
        """A nick as people say it: "bob on irc.example.org", or just "bob" on a fixed server."""
        nick, _, server = address.rpartition("%")
        if not nick or server == self.config["fixed_server"]:
            return nick or address
        return f"{nick} on {server}"

    def occupant_address(self, room: str, nick: str) -> str:
        return self.normalize_address(f"{nick}%{room.rpartition('%')[2]}")

    def endpoint(self, server: str, user: dict | None = None) -> tuple[str, int, bool, bool]:
        """(host, port, tls, verify): the operator's settings for the server, then the user's TLS and port."""
        conf = (self.config["servers"] or {}).get(server, {})
        user = user or {}
        host, _, port = server.partition(":")
        tls = conf.get("tls", True)
        if user.get("tls") in ("yes", "no"):
            tls = user["tls"] == "yes"
        port = (port_number(user.get("port")) or (conf.get("port") if tls == conf.get("tls", True) else None)
                or port_number(port) or (6697 if tls else 6667))
        return conf.get("host", host), int(port), tls, conf.get("verify", True)

    # -- per-server settings (XEP-0050 "configure" on the server's JID) ----------------

    SERVER_FIELDS = [
        Field("nick", "Nickname (default: the one you join with)"),
        Field("username", "User name (ident)"),
        Field("realname", "Real name"),
        Field("password", "Server password", type="text-private"),
        Field("sasl_password", "SASL PLAIN password (account = nickname, or the SASL user name below)",
              type="text-private"),
        Field("sasl_username", "SASL user name (default: the nickname)"),
        Field("after_connect", "Commands sent after connecting (one per line, e.g. PRIVMSG NickServ :IDENTIFY pw)",
              type="text-multi"),
        Field("tls", "Use TLS", type="list-single", options=("default", "yes", "no"), default="default"),
        Field("port", "Port (empty: the operator's default)"),
    ]

    CHANNEL_FIELDS = [
        Field("encoding", "Encoding of this channel's lines that are not UTF-8 (empty: the gateway's)"),
        Field("persistent", "Stay in the channel when all your clients have left it", type="boolean",
              default=False),
        Field("max_history", "Messages of history sent when you join (empty: the gateway's default)"),
    ]

    def address_fields(self, address: str) -> list[Field]:
        if "%" in address:
            return self.CHANNEL_FIELDS if self.is_room(address) else []
        if self.ident_table is not None:
            # The identd answers the user's token, which is also the user name sent: say so in the form.
            return [dataclasses.replace(f, label="User name (not used: this gateway's identd gives your token)")
                    if f.var == "username" else f for f in self.SERVER_FIELDS]
        return self.SERVER_FIELDS

    def address_values(self, registration: Registration, address: str) -> dict[str, Any]:
        if "%" in address:
            return dict((registration.settings.get("channels") or {}).get(address, {}))
        stored = dict((registration.settings.get("servers") or {}).get(address, {}))
        stored.pop("commands", None)
        return {**stored, "after_connect": [mask_command(c) for c in self._commands(registration, address)]}

    @staticmethod
    def _commands(registration: Registration, address: str) -> list[str]:
        """
        The user's connect commands: sealed with the secrets (they often carry a
        NickServ password), or, for a registration from before that, in settings.
        """
        sealed = registration.secrets.get(f"{address}:commands")
        if sealed is not None:
            return [c for c in sealed.split("\n") if c]
        return list(((registration.settings.get("servers") or {}).get(address, {})).get("commands", []))

    def update_address(self, registration: Registration, address: str, values: dict[str, Any]):
        if "%" in address:
            return self._update_channel(registration, address, values)
        servers = dict(registration.settings.get("servers") or {})
        current = dict(servers.get(address, {}))
        if values.get("port") not in (None, "") and port_number(values["port"]) is None:
            raise RegistrationError("the port must be a number from 1 to 65535", "bad-request")
        for key in ("tls", "port"):
            if key in values:
                current[key] = str(values[key]).strip()
        for key in ("nick", "username", "realname", "sasl_username"):
            if key in values:
                value = text.one_line(values[key])
                if key == "nick" and value and not _NICK.match(value):
                    raise RegistrationError(f"{value!r} is not a valid IRC nickname")
                current[key] = value
        secrets = dict(registration.secrets)
        if "after_connect" in values:
            # A line the form showed masked and the user left alone keeps the stored one.
            kept = {mask_command(c): c for c in self._commands(registration, address)}
            lines = [text.one_line(c) for c in values["after_connect"] if text.one_line(c)]
            secrets[f"{address}:commands"] = "\n".join(kept.get(line, line) for line in lines)
        elif current.get("commands") and f"{address}:commands" not in secrets:
            secrets[f"{address}:commands"] = "\n".join(current["commands"])    # moved out of plain settings
        current.pop("commands", None)
        servers[address] = current
        for key in ("password", "sasl_password"):
            if values.get(key):                       # an empty answer keeps the stored secret
                secrets[f"{address}:{key}"] = values[key]
        return {**registration.settings, "servers": servers}, secrets

    def _update_channel(self, registration: Registration, address: str, values: dict[str, Any]):
        channels = dict(registration.settings.get("channels") or {})
        current = dict(channels.get(address, {}))
        if "encoding" in values:
            encoding = text.one_line(values["encoding"] or "")[:40]
            if encoding:
                try:
                    encoding = codecs.lookup(encoding).name
                except LookupError:
                    raise RegistrationError(f"{encoding!r} is not an encoding this gateway knows", "bad-request")
            current["encoding"] = encoding
        if "persistent" in values:
            current["persistent"] = str(values["persistent"]).lower() in ("1", "true")
        if "max_history" in values:
            raw = str(values["max_history"] or "").strip()
            if raw and not (raw.isascii() and raw.isdigit() and int(raw) <= 1000):   # '²' is isdigit(), not int()
                raise RegistrationError("the history length must be a number from 0 to 1000", "bad-request")
            current["max_history"] = raw
        channels[address] = current
        settings = {**registration.settings, "channels": channels}
        channel, _, server = address.rpartition("%")
        session = self.sessions.get((registration.jid, server))
        if session is not None:
            session.settings["channels"] = self._channels_of(settings, server)     # applies now
        return settings, dict(registration.secrets)

    @staticmethod
    def _channels_of(settings: dict, server: str) -> dict[str, dict]:
        suffix = "%" + server
        return {address[: -len(suffix)]: conf for address, conf in (settings.get("channels") or {}).items()
                if address.endswith(suffix)}

    def server_settings(self, registration: Registration, server: str, nick: str) -> dict[str, Any]:
        node = registration.jid.partition("@")[0]
        stored = {k: v for k, v in ((registration.settings.get("servers") or {}).get(server, {})).items() if v}
        base = {"nick": stored.get("nick") or nick or node, "tls": stored.get("tls", ""), "port": stored.get("port", ""),
                "username": stored.get("username") or re.sub(r"[^a-z0-9]", "", node.lower())[:10] or "xmpp",
                "realname": stored.get("realname") or node}
        prefix = server + ":"
        base.update({k[len(prefix):]: v for k, v in registration.secrets.items() if k.startswith(prefix)})
        if self.ident_table is not None:
            # The identd answers this token: one that differs from USER would show as ~. The user's own
            # choice is not used, so nobody can take another user's token (and evade, or draw, their bans).
            base["username"] = self.ident_token(registration.jid)
        base["commands"] = self._commands(registration, server)
        base["channels"] = self._channels_of(registration.settings, server)
        base["webirc"] = self.webirc_line(server, registration.jid)
        if base.get("sasl_password"):
            base["sasl_username"] = stored.get("sasl_username") or base["nick"]
        return base

    def trusted_destination(self, server: str, port: int) -> bool:
        """A server the operator configured, on the port the operator gave (or the default): not checked."""
        conf = (self.config["servers"] or {}).get(server)
        if conf is None and server != self.config["fixed_server"]:
            return False
        return port == (conf or {}).get("port", port if port in (6667, 6697) else None)

    def session(self, registration: Registration, server: str, nick: str = "") -> IRCSession:
        key = (registration.jid, server)
        found = self.sessions.get(key)
        if found is None or found.closed:
            limit = self.config["max_sessions_per_user"]
            if sum(1 for s in self.sessions_of(registration.jid) if not s.closed) >= limit:
                raise PolicyViolation(f"you are connected to {limit} IRC servers, the most this gateway allows; "
                                      "leave every room of one of them first")
            found = self.sessions[key] = IRCSession(self, registration, server, nick)
            self._by_server.setdefault(server, {})[registration.jid] = found
            self._by_user.setdefault(registration.jid, {})[server] = found
        return found

    def joined_nick(self, user: str, resource: str, room: str) -> str | None:
        channel, _, server = room.rpartition("%")
        session = self.sessions.get((user, server))
        if session is None or session.closed:
            return None
        joined = session.rooms.get(channel.lower())
        return text.clean_name(session.nick) if joined is not None and resource in joined.resources else None

    def sessions_on(self, server: str):
        """Every user's session with ``server`` (an index: a big gateway has thousands of sessions)."""
        return list(self._by_server.get(server, {}).values())

    def sessions_of(self, user: str) -> list[IRCSession]:
        """Every session of ``user`` (the index the per-user limits read)."""
        return list(self._by_user.get(user, {}).values())

    def session_closed(self, session: IRCSession) -> None:
        if self.sessions.get((session.user, session.server)) is session:
            del self.sessions[(session.user, session.server)]
        for index, outer, inner in ((self._by_server, session.server, session.user),
                                    (self._by_user, session.user, session.server)):
            found = index.get(outer)
            if found is not None and found.get(inner) is session:
                del found[inner]
                if not found:
                    del index[outer]

    # -- rooms ----------------------------------------------------------------------

    def join(self, registration: Registration, resource: str, room: str, nick: str, password: str | None):
        channel, _, server = room.rpartition("%")
        nick = text.one_line(nick)
        if not _NICK.match(nick):
            raise AddressError(f"{nick!r} is not a valid IRC nickname", "not-acceptable")
        existing = self.sessions.get((registration.jid, server))
        if existing is None or existing.closed or channel.lower() not in existing.rooms:
            limit = self.config["max_rooms_per_user"]
            rooms = sum(len(s.rooms) for s in self.sessions_of(registration.jid) if not s.closed)
            if rooms >= limit:
                raise PolicyViolation(f"you are in {limit} IRC channels, the most this gateway allows; "
                                      "leave one first")
        self.session(registration, server, nick).join(resource, channel, nick, password)

    def leave(self, user: str, resource: str, room: str):
        channel, _, server = room.rpartition("%")
        session = self.sessions.get((user, server))
        if session is not None:
            session.leave(resource, channel)

    # -- moderation (IModeration; gateway/adapters/irc/moderation.py) -------------------

    def _moderating(self, registration: Registration, room: str, nick: str) -> tuple[IRCSession, str]:
        channel, _, server = room.rpartition("%")
        nick = text.one_line(nick or "")
        if not _NICK.match(nick):
            raise GatewayError(f"{nick!r} is not an IRC nickname", "item-not-found", "cancel")
        session = self.sessions.get((registration.jid, server))
        if session is None or session.closed or channel.lower() not in session.rooms:
            raise GatewayError(f"join {channel} first", "forbidden", "auth")
        return session, nick

    def set_role(self, registration: Registration, room: str, nick: str, role: str, reason: str | None):
        try:
            session, nick = self._moderating(registration, room, nick)
        except GatewayError as e:
            return defer.fail(e)
        return session.set_role(room.rpartition("%")[0], nick, role, reason)

    def set_affiliation(self, registration: Registration, room: str, nick: str, affiliation: str,
                        reason: str | None):
        try:
            session, nick = self._moderating(registration, room, nick)
        except GatewayError as e:
            return defer.fail(e)
        return session.set_affiliation(room.rpartition("%")[0], nick, affiliation, reason)

    def invite(self, registration: Registration, room: str, address: str, reason: str | None):
        """IRC's INVITE carries no reason: ``reason`` is not sent."""
        nick = self.occupant_nick(room, address)
        if nick is None:
            return defer.fail(GatewayError(f"{address} is nobody on {room.rpartition('%')[2]}", "item-not-found",
                                           "cancel"))
        try:
            session, nick = self._moderating(registration, room, nick)
        except GatewayError as e:
            return defer.fail(e)
        return session.invite(room.rpartition("%")[0], nick)

    def occupant_nick(self, room: str, address: str) -> str | None:
        local, _, server = (address or "").rpartition("%")
        if server != room.rpartition("%")[2] or not _NICK.match(local):
            return None
        return local

    # -- messages -------------------------------------------------------------------

    def send(self, message: OutboundMessage, registration: Registration) -> defer.Deferred:
        body = message.body or ""
        target, _, server = message.recipient.rpartition("%")
        if message.kind == "groupchat" and message.subject is not None and not body:
            session = self.session(registration, server)
            return session.send_raw([f"TOPIC {target} :{text.one_line(message.subject)}"]).addCallback(
                lambda _: SendResult())
        if not body.strip() and not (message.reaction_to and message.reactions):
            return defer.succeed(SendResult(parts=0))
        if not target:
            return defer.fail(PermanentFailure("write to a channel or a nickname on that server", "not-acceptable"))
        session = self.session(registration, server)
        if message.kind != "groupchat":
            return session.send_private(message, target).addCallback(_lines_sent)
        room = session._room(target)
        if room is None:
            return defer.fail(PermanentFailure(f"join {target} before writing to it", "not-acceptable"))
        return session.send(target, message, room).addCallback(_lines_sent)

    def send_now(self, message: OutboundMessage, registration: Registration):
        """
        ISendNow: ``send`` of a room line to a connected session, at once (the
        hot path: no Deferred). The same checks in the same order, the same
        lines and reflection (IRCSession.send_now); NOT_NOW, before any of
        them has an effect, for what only ``send`` does (a topic, a private
        message, a session not connected yet).
        """
        if message.kind != "groupchat":
            return NOT_NOW
        body = message.body or ""
        target, _, server = message.recipient.rpartition("%")
        if message.subject is not None and not body:
            return NOT_NOW
        if not body.strip() and not (message.reaction_to and message.reactions):
            return SendResult(parts=0)
        if not target:
            raise PermanentFailure("write to a channel or a nickname on that server", "not-acceptable")
        session = self.sessions.get((registration.jid, server))
        if session is None or session.closed or session.conn is None:
            return NOT_NOW                     # self.session() would make one, or it waits to be ready
        room = session._room(target)
        if room is None:
            raise PermanentFailure(f"join {target} before writing to it", "not-acceptable")
        return _lines_sent(session.send_now(target, message, room))

    def typing(self, message: OutboundMessage, registration: Registration) -> None:
        """XEP-0085 to IRCv3 ``+typing`` (active, paused, done), where the server takes client tags."""
        target, _, server = message.recipient.rpartition("%")
        session = self.sessions.get((registration.jid, server))
        if session is None or session.closed or not target:
            return None
        if message.kind == "groupchat" and session._room(target) is None:
            return None
        session.tagmsg(target, {"+typing": TYPING_OUT.get(message.chat_state or "", "done")})
        return None

    def history_length(self, registration: Registration, room: str) -> int | None:
        """IRoomArchive: the channel's ``max_history`` setting (configure or muc#owner), None when unset."""
        raw = str(((registration.settings.get("channels") or {}).get(room) or {}).get("max_history") or "").strip()
        return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 4 else None

    def connection_status(self, user: str, address: str) -> tuple[bool, str] | None:
        if "%" in address:
            return None                        # a channel or a nick: not a connection
        session = self.sessions.get((user, address))
        if session is None or session.closed:
            return False, f"not connected to {address}"
        return session.status()

    def connections(self, user: str) -> list[ConnectionInfo]:
        found = []
        for session in sorted(self.sessions_of(user), key=lambda s: s.server):
            if session.closed:
                continue
            server = session.server
            host, port, tls, _ = self.endpoint(server, session.settings)
            conn = session.conn
            found.append(ConnectionInfo(server, host, port, tls, text.clean_name(session.nick), conn is not None,
                                        conn.signed_on_at if conn is not None else None))
        return found

    def users_connected(self) -> list[str]:
        return sorted({user for (user, _), session in self.sessions.items() if not session.closed})

    def disconnect(self, user: str, address: str | None, reason: str) -> int:
        closing = [s for s in self.sessions_of(user) if not s.closed and address in (None, s.server)]
        for session in closing:
            session.disconnect(text.one_line(reason)[:200] or "Disconnected")
        return len(closing)

    def takes_commands(self, address: str) -> bool:
        return "%" not in address              # a server's JID, like biboumi's

    def raw_command(self, registration: Registration, address: str, body: str) -> defer.Deferred:
        try:
            lines = raw.commands(body)
            session = self.session(registration, address)
        except GatewayError as e:
            return defer.fail(e)
        return session.raw_command(lines)

    def user_unregistered(self, registration: Registration) -> None:
        for session in self.sessions_of(registration.jid):
            session.close("Unregistered")
