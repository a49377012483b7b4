"""
Channel members stored compactly. Every user's connection keeps its own view of
each of its channels (IRC sends each connection its own JOINs, PARTs and MODEs,
and two views may differ for a moment), so a channel of a thousand members
joined by a thousand users is a million entries: each must be small.

A member is one dict entry, nick to an int of mode bits (one bit per prefix,
``~&@%+``), instead of a set of prefix characters (an empty set alone is 216
bytes; a small int is shared by the interpreter). Nicks are interned, so the
same nick seen by many connections is one string, not one per connection.
"""

from __future__ import annotations

import sys

#: Channel prefixes we know, highest first: ``~`` owner, ``&`` admin, ``@`` op, ``%`` halfop, ``+`` voice.
PREFIXES = "~&@%+"
#: The bit of each prefix; a member's modes are the OR of theirs (0: none).
BIT = {p: 1 << i for i, p in enumerate(PREFIXES)}
#: The mode letter (MODE #chan +o nick) of each prefix's bit.
MODE_BIT = {"q": BIT["~"], "a": BIT["&"], "o": BIT["@"], "h": BIT["%"], "v": BIT["+"]}
ALL = (1 << len(PREFIXES)) - 1


def split_prefixes(entry: str) -> tuple[int, str]:
    """A NAMES entry (``@+nick`` with multi-prefix) as (mode bits, nick)."""
    bits = 0
    i = 0
    while i < len(entry) and entry[i] in BIT:
        bits |= BIT[entry[i]]
        i += 1
    return bits, entry[i:]


def highest(bits: int) -> str | None:
    """The highest prefix among ``bits`` (the one that decides the role), or None."""
    bits &= ALL
    if not bits:
        return None
    return PREFIXES[(bits & -bits).bit_length() - 1]


def prefixes(bits: int) -> str:
    """Every prefix among ``bits``, highest first (``@+``)."""
    return "".join(p for p in PREFIXES if bits & BIT[p])


def nick(name: str) -> str:
    """
    The one copy of a nick: a thousand connections seeing ``alice`` keep one
    string. Interned strings are freed with their last holder, so a server
    cannot grow this with names nobody keeps.
    """
    return sys.intern(name) if type(name) is str else sys.intern(str(name))


#: The shared (user, host) pairs, at most USERHOST_LIMIT (emptied when full, so a server
#: inventing hosts cannot grow it: pairs already handed out stay valid, only unshared).
_USERHOSTS: dict[tuple[str, str], tuple[str, str]] = {}
USERHOST_LIMIT = 65536


def userhost(found: tuple[str, str]) -> tuple[str, str]:
    """
    An occupant's (user, host), one tuple for every connection that sees
    that occupant: in a channel of a hundred joined by a hundred users each
    pair would otherwise be a hundred tuples (56 bytes each), the largest
    per-member cost left. Its strings are interned, as nicks are.
    """
    shared = _USERHOSTS.get(found)
    if shared is None:
        if len(_USERHOSTS) >= USERHOST_LIMIT:
            _USERHOSTS.clear()
        user, host = found
        shared = (sys.intern(user), sys.intern(host))
        _USERHOSTS[shared] = shared
    return shared
