"""
Where a user may make the gateway connect. An IRC address names any host and
port, so without a policy the gateway is a pivot into the operator's network
(``#x%127.0.0.1:6379``, a cloud metadata address, an intranet host). A host
chosen by a user is resolved (off the reactor) and refused when any of its
addresses is loopback, private, link-local, multicast, unspecified, reserved or
otherwise not global, unless the operator allows private destinations; the
connection then goes to the address that was checked, not to the name again, so
a second DNS answer cannot move it (DNS rebinding). Ports are limited to a set.
Servers the operator configured (``servers``, ``fixed_server``) are trusted:
their host and their configured port are not checked.
"""

from __future__ import annotations

import ipaddress
import socket

from twisted.internet import threads

from gateway.model import GatewayError


class DestinationRefused(GatewayError):
    """The user asked for a destination the operator does not let the gateway reach."""

    condition = "not-allowed"
    error_type = "cancel"


def check_port(port: int, allowed: list[int]) -> None:
    if port not in allowed:
        raise DestinationRefused(f"port {port} is not allowed for IRC servers here "
                                 f"(allowed: {', '.join(str(p) for p in sorted(allowed))})")


def address_kind(ip: str) -> str | None:
    """Why ``ip`` is not a public address ("loopback", "private", ...), or None when it is one."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for kind, test in (("unspecified", addr.is_unspecified), ("loopback", addr.is_loopback),
                       ("link-local", addr.is_link_local), ("multicast", addr.is_multicast),
                       ("private", addr.is_private), ("reserved", addr.is_reserved)):
        if test:
            return kind
    return None if addr.is_global else "non-public"


def _resolve(host: str, port: int) -> list[tuple[int, str]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise DestinationRefused(f"{host} cannot be resolved: {e}", "remote-server-not-found") from None
    seen = []
    for family, _, _, _, sockaddr in infos:
        if (family, sockaddr[0]) not in seen:
            seen.append((family, sockaddr[0]))
    return seen


def choose(host: str, addresses: list[tuple[int, str]], allow_private: bool) -> str:
    """
    The address to connect to. Every address of the name is checked, not just
    the first: a name with one public and one loopback address is refused.
    """
    if not addresses:
        raise DestinationRefused(f"{host} has no address", "remote-server-not-found")
    if not allow_private:
        for _, ip in addresses:
            kind = address_kind(ip)
            if kind is not None:
                shown = host if host == ip else f"{host} ({ip})"
                article = "an" if kind[0] in "aeiou" else "a"
                raise DestinationRefused(f"{shown} is {article} {kind} address: this gateway does not connect there")
    ipv4 = [ip for family, ip in addresses if family == socket.AF_INET]
    return ipv4[0] if ipv4 else addresses[0][1]


def resolve_destination(host: str, port: int, allow_private: bool):
    """Deferred: the checked address for ``host`` (resolution runs in a thread), or DestinationRefused."""
    return threads.deferToThread(_resolve, host, port).addCallback(
        lambda addresses: choose(host, addresses, allow_private))
