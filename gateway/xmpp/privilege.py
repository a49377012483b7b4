"""
XEP-0356 privileged entity: what the user's server allows this component.

After the handshake a server that grants the component permissions sends a
``<message/>`` from each of its hosts (the domain whose users are affected)
carrying ``<privilege/>``: Prosody's mod_privilege (prosody-modules) speaks
``urn:xmpp:privilege:2``, ejabberd 23.01's ``urn:xmpp:privilege:1``. Both are
read, and the namespace is kept, because wrappers (a message sent as a user)
must use the server's own version. A server that grants nothing sends
nothing; the roster then falls back to subscription requests
(gateway/xmpp/roster.py).

Only a bare domain JID can advertise (a user or a resource cannot: their
server stamps ``from``), and only for itself: a remote server that sent an
advertisement would "grant" rights over its own users only. The element is
bounded: a few known accesses and types, at most ``MAX_PERMS`` permissions
and ``MAX_IQ_NAMESPACES`` IQ namespaces; anything else is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.logger import Logger
from twisted.words.xish import domish

from gateway.xmpp.stanzas import parse_jid
from wokkel.subprotocols import XMPPHandler

log = Logger(namespace="gateway.xmpp.privilege")

NS_PRIVILEGE_1 = "urn:xmpp:privilege:1"
NS_PRIVILEGE_2 = "urn:xmpp:privilege:2"
NAMESPACES = (NS_PRIVILEGE_2, NS_PRIVILEGE_1)
MAX_PERMS = 16
MAX_IQ_NAMESPACES = 32
#: The types each access may have (XEP-0356 §3); an unknown type counts as "none".
TYPES = {
    "roster": frozenset({"none", "get", "set", "both"}),
    "message": frozenset({"none", "outgoing"}),
    "presence": frozenset({"none", "managed_entity", "roster"}),
}
IQ_TYPES = frozenset({"get", "set", "both"})


@dataclass(frozen=True)
class Permissions:
    """One host's grant to this component, as advertised."""

    host: str
    namespace: str
    roster: str = "none"
    message: str = "none"
    presence: str = "none"
    #: IQ namespace -> "get", "set" or "both" (privilege:2's ``access='iq'``).
    iq: dict[str, str] = field(default_factory=dict)

    @property
    def roster_set(self) -> bool:
        """Whether the component may push items into this host's users' rosters."""
        return self.roster in ("set", "both")

    @property
    def roster_get(self) -> bool:
        return self.roster in ("get", "both")


def parse_advertisement(stanza: domish.Element) -> Permissions | None:
    """
    The Permissions a ``<message/>`` advertises, or None when it is no
    advertisement (no ``<privilege/>`` of a known version, or not from a bare
    domain JID). Attribute order and unknown extras do not matter.
    """
    sender = parse_jid(stanza.getAttribute("from"))
    if sender is None or sender.user or sender.resource:
        return None
    privilege = next((c for c in stanza.elements() if c.name == "privilege" and c.uri in NAMESPACES), None)
    if privilege is None:
        return None
    values: dict[str, str] = {}
    iq: dict[str, str] = {}
    for n, perm in enumerate(privilege.elements(privilege.uri, "perm")):
        if n >= MAX_PERMS:
            break
        access = perm.getAttribute("access")
        if access == "iq" and privilege.uri == NS_PRIVILEGE_2:
            for m, ns in enumerate(perm.elements(privilege.uri, "namespace")):
                if m >= MAX_IQ_NAMESPACES:
                    break
                name, kind = ns.getAttribute("ns"), ns.getAttribute("type")
                if name and len(name) <= 200 and kind in IQ_TYPES:
                    iq[name] = kind
            continue
        allowed = TYPES.get(access)
        if allowed is None or access in values:
            continue                          # unknown access, or a repeat: the first one counts
        kind = perm.getAttribute("type", "none")
        values[access] = kind if kind in allowed else "none"
    return Permissions(host=sender.host.lower(), namespace=privilege.uri, iq=iq, **values)


class Grants:
    """
    What each host granted, shared by the connections of one domain (a spare
    connection hears the same advertisement). Forgotten when a connection
    comes up, so a server whose operator took the grant away is not asked again.
    """

    def __init__(self):
        self._by_host: dict[str, Permissions] = {}

    def clear(self) -> None:
        self._by_host.clear()

    def put(self, permissions: Permissions) -> None:
        if len(self._by_host) < 1000 or permissions.host in self._by_host:
            self._by_host[permissions.host] = permissions

    def get(self, host: str) -> Permissions | None:
        return self._by_host.get(host.lower())


class PrivilegeHandler(XMPPHandler):
    """Reads the advertisements a component stream receives into ``grants``."""

    def __init__(self, domain: str, grants: Grants, roster=None):
        super().__init__()
        self.domain = domain
        self.grants = grants
        #: gateway.xmpp.roster.RosterKeeper, told when a connection comes up.
        self.roster = roster

    def connectionInitialized(self):
        self.grants.clear()
        if self.roster is not None:
            self.roster.connection_up()
        # Before the message handler: an advertisement is no message to a contact.
        self.xmlstream.addObserver("/message/privilege", self.on_message, priority=10)

    def on_message(self, stanza: domish.Element) -> None:
        if stanza.getAttribute("type") == "error":
            return
        permissions = parse_advertisement(stanza)
        if permissions is None:
            return
        stanza.handled = True
        self.grants.put(permissions)
        log.info("component {domain}: {host} grants {what} ({ns})", domain=self.domain, host=permissions.host,
                 what=", ".join(f"{k}={getattr(permissions, k)}" for k in ("roster", "message", "presence"))
                 + (f", iq={sorted(permissions.iq.items())}" if permissions.iq else ""), ns=permissions.namespace)
