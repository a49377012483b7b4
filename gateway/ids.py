"""
Random ids (message ids, claim tokens) from a pool of kernel randomness.

One ``os.urandom`` per id was a system call per message, and the call gives
the GIL away: with the SQLite thread busy, the reactor then waited for it to
come back (measured in ``core_path``: about 9 µs per id under load). The pool
draws ``POOL_BYTES`` at a time and hands each id out once, so ids keep the
kernel's unpredictability (an id says nothing about any other) and stay unique.
"""

from __future__ import annotations

import os

#: Bytes drawn per system call: 4,096 ids of 16 bytes. With 256 a refill came every
#: 64 echoed messages, and each waited for the GIL behind the SQLite thread (0.85 ms
#: per call under load in core_path's profile); the pool holds about 360 KiB (4,096 strings of 32 characters).
POOL_BYTES = 65536
_ID_HEX = 32

_EMPTY = iter(())
#: The ids not handed out yet. A list iterator's next() is one step under the
#: GIL, so threads drawing at once never get the same id; a refill by two
#: threads at once only draws twice.
_pool = _EMPTY


def new_id() -> str:
    """128 random bits as 32 hex digits (a uuid4's shape)."""
    global _pool
    value = next(_pool, None)
    if value is None:
        hexed = os.urandom(POOL_BYTES).hex()
        fresh = iter([hexed[at:at + _ID_HEX] for at in range(0, len(hexed), _ID_HEX)])
        value = next(fresh)
        _pool = fresh
    return value


def _reset() -> None:
    """Forget the ids not handed out: a forked child must not hand out the same ones as its parent."""
    global _pool
    _pool = _EMPTY


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset)
