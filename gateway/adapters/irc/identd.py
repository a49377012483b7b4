"""
A built-in ident server (RFC 1413) for the gateway's own IRC connections.

Why: an IRC server asks the connecting host's port 113 who owns the
connection; without an answer it shows the user as ``~username`` and many
networks treat every ``~`` user of one address alike (one ban for the whole
gateway, one clone limit). Answering with a stable per-user token lets a
network tell the gateway's users apart, and ban one, without learning who they
are on XMPP.

It is a listener on the internet, so everything a peer can make it do is
bounded (docs/security.md): one query per connection, a line of at most
``MAX_LINE`` bytes (RFC 1413's 1,000), ``TIMEOUT`` seconds to send it, a cap on
connections at once (overall and per peer address), and it answers only about
connections between the gateway and the host asking: anyone else gets
``NO-USER`` whatever the ports, so a scan of port pairs learns nothing.

Twisted's ``twisted.protocols.ident.IdentServer`` is reused for the reply
formats and the RFC's error names; its parsing is not: under Python 3 it splits
a bytes line with a str and fails on every query, it accepts anything ``int``
reads ("+5", "1_000", non-ASCII digits) and it answers a malformed query by
closing without INVALID-PORT.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections import defaultdict
from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.protocols import ident, policies

log = Logger(namespace="gateway.adapters.irc.identd")

#: RFC 1413: "the query ... is at most 1000 characters"; a real one is at most 13 bytes.
MAX_LINE = 1000
#: Seconds a peer has to send its query (an IRC server asks at once, within milliseconds).
TIMEOUT = 10.0
#: Connections one peer address may hold at once: one address cannot take every place.
MAX_PER_ADDRESS = 16
#: The ident reply's operating system field (RFC 1340 names; "UNIX" is what identds send).
SYSTEM = "UNIX"
#: Length of the token: 10 characters is USERLEN on most IRC servers (Solanum, Hybrid,
#: UnrealIRCd); a longer user name would be cut, and then differ from the USER we sent.
TOKEN_LENGTH = 10

_QUERY = re.compile(rb"[ \t]*([0-9]{1,5})[ \t]*,[ \t]*([0-9]{1,5})[ \t]*\r?", re.ASCII)


def ident_token(key: bytes, jid: str) -> str:
    """
    The user's ident and IRC user name: 10 characters of lower-case base32
    (``a-z``, ``2-7``) of HMAC-SHA256(key, bare JID). Keyed, so the JID cannot
    be recovered or guessed by hashing candidate JIDs; stable as long as the key
    is (across restarts and across processes that share the configuration);
    50 bits, so two users of one gateway share a token with odds of about 1 in
    2^50 per pair; lower-case letters and digits only, valid in every ident
    and IRC user name (no ``~``, no leading punctuation, no case to fold).
    """
    bare = jid.partition("/")[0].lower()
    digest = hmac.new(key, b"irc-ident\0" + bare.encode("utf-8"), hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:TOKEN_LENGTH]


def webirc_address(key: bytes, jid: str) -> str:
    """
    A per-user IPv6 address in ``fd00::/8`` (unique local: routed nowhere, never anyone's real
    address) from the same keyed hash family as the token, for WEBIRC when the user's own
    address is unknown (always, for XMPP users).
    """
    bare = jid.partition("/")[0].lower()
    digest = hmac.new(key, b"irc-webirc-ip\0" + bare.encode("utf-8"), hashlib.sha256).digest()
    return str(ipaddress.IPv6Address(b"\xfd" + digest[:15]))


def _host(address: str) -> str:
    """An address in one spelling (an IPv4-mapped IPv6 address as IPv4), to compare two."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


class IdentTable:
    """
    The adapter's open IRC connections by (our port, their port), each with the
    addresses of both ends and the token to answer. A connection is added when
    its TCP connection is made (an IRC server asks before it reads our NICK) and
    removed when it is lost.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, int], dict[int, tuple[str, str, str]]] = defaultdict(dict)

    def add(self, conn: Any, local: Any, peer: Any, token: str) -> None:
        self._entries[(local.port, peer.port)][id(conn)] = (_host(local.host), _host(peer.host), token)

    def remove(self, conn: Any, local: Any, peer: Any) -> None:
        key = (local.port, peer.port)
        entries = self._entries.get(key)
        if entries is not None:
            entries.pop(id(conn), None)
            if not entries:
                del self._entries[key]

    def lookup(self, our_host: str, our_port: int, their_host: str, their_port: int) -> str | None:
        """The token for the connection between these two ends, or None."""
        for local, peer, token in self._entries.get((our_port, their_port), {}).values():
            if peer == _host(their_host) and local in (_host(our_host), "0.0.0.0", "::"):
                return token
        return None

    def __len__(self) -> int:
        return sum(len(e) for e in self._entries.values())


class IdentProtocol(ident.IdentServer, policies.TimeoutMixin):
    """One query, answered, then the connection is closed."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, table: IdentTable, clock):
        self.table = table
        self.callLater = clock.callLater            # TimeoutMixin schedules on the adapter's clock
        self._answered = False

    def connectionMade(self) -> None:
        self.setTimeout(TIMEOUT)

    def dataReceived(self, data: bytes) -> None:
        if not self._answered:
            super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._answered:
            return
        self._answered = True
        self.setTimeout(None)
        m = _QUERY.fullmatch(line)
        if m is None:
            # Nothing we can echo safely: the RFC's reply with the ports unknown.
            self.sendLine("0, 0 : ERROR : INVALID-PORT")
        else:
            ours, theirs = int(m.group(1)), int(m.group(2))
            if 0 < ours < 65536 and 0 < theirs < 65536:
                self.validQuery(ours, theirs)       # Twisted's: lookup, then its USERID or ERROR reply
            else:
                self.sendLine(f"{ours}, {theirs} : ERROR : INVALID-PORT")
        self.transport.loseConnection()

    def lookup(self, serverAddress: tuple[str, int], clientAddress: tuple[str, int]) -> tuple[str, str]:
        token = self.table.lookup(serverAddress[0], serverAddress[1], clientAddress[0], clientAddress[1])
        if token is None:
            raise ident.NoUser()
        return SYSTEM, token

    def sendLine(self, line: str | bytes) -> None:
        # Twisted's IdentServer formats str replies; the wire wants bytes, CR LF ended (RFC 1413).
        data = line.encode("ascii") if isinstance(line, str) else line
        self.transport.write(data + b"\r\n")

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line past MAX_LINE: no reply, the connection is dropped (nothing more of it is read)."""
        self._answered = True
        self.setTimeout(None)
        self.transport.abortConnection()

    def timeoutConnection(self) -> None:
        self.transport.abortConnection()

    def connectionLost(self, reason=None) -> None:
        self.setTimeout(None)
        self.factory.released(self)


class IdentFactory(protocol.Factory):
    """Counts connections; past ``max_connections`` (or MAX_PER_ADDRESS for one peer) a new one is closed at once."""

    noisy = False

    def __init__(self, table: IdentTable, clock, max_connections: int):
        self.table = table
        self.clock = clock
        self.max_connections = max_connections
        self.open = 0
        self.per_address: dict[str, int] = defaultdict(int)
        #: Connections refused for the caps (for tests and the log).
        self.refused = 0

    def buildProtocol(self, addr) -> IdentProtocol | None:
        host = _host(getattr(addr, "host", ""))
        if self.open >= self.max_connections or self.per_address[host] >= MAX_PER_ADDRESS:
            self.refused += 1
            if self.refused in (1, 100) or self.refused % 10000 == 0:
                log.warn("identd: {n} connection(s) refused so far: at the cap of {cap} at once "
                         "({per} per address)", n=self.refused, cap=self.max_connections, per=MAX_PER_ADDRESS)
            return None                               # Twisted closes the connection
        self.open += 1
        self.per_address[host] += 1
        p = IdentProtocol(self.table, self.clock)
        p.factory = self
        p._address = host
        return p

    def released(self, p: IdentProtocol) -> None:
        self.open -= 1
        host = p._address
        self.per_address[host] -= 1
        if self.per_address[host] <= 0:
            del self.per_address[host]


__all__ = ["IdentFactory", "IdentProtocol", "IdentTable", "ident_token"]
