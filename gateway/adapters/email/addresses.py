"""Email addresses as the gateway accepts them: a plain addr-spec, domain lower-cased."""

from __future__ import annotations

import re

from gateway.model import AddressError

_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

#: RFC 2142 mailboxes belong to the operator, never to a user's alias.
RESERVED = frozenset({"postmaster", "abuse", "mailer-daemon", "hostmaster", "webmaster", "root", "noc",
                      "security", "admin", "administrator", "nobody"})


def check_local(local: str) -> str | None:
    if not local or len(local) > 64:
        return "the part before @ must be 1 to 64 characters"
    if not _LOCAL.match(local):
        return "the part before @ may hold letters, digits, dots (not two in a row) and !#$%&'*+/=?^_`{|}~-"
    return None


def check_domain(domain: str) -> str | None:
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        return f"{domain!r} is not a valid mail domain"
    return None


def normalize(text: str) -> str:
    """``text`` as ``local@domain``; raise AddressError with the reason otherwise."""
    raw = (text or "").strip()
    if raw.startswith("<") and raw.endswith(">"):
        raw = raw[1:-1].strip()
    if not raw:
        raise AddressError("the email address is empty")
    if any(ord(c) < 33 or c == "\x7f" for c in raw):
        raise AddressError("an email address cannot contain spaces or control characters")
    local, at, domain = raw.rpartition("@")
    if not at:
        raise AddressError(f"{raw!r} is not an email address (no @)")
    problem = check_local(local) or check_domain(domain)
    if problem:
        raise AddressError(problem)
    return f"{local}@{domain.lower()}"
