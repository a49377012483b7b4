"""
How a queue row's payload (a message's fields) is stored.

Compact JSON: no spaces, and without the fields the row's own columns already
hold (the message id, the user, the component, the creation time), which were
about a third of a message's row and encoded for every message. A payload
that left any of them out is written ``[mask, fields]``, ``mask`` saying which
to take back from the columns; one whose field differs from its column keeps
it, so what comes back is exactly what went in. A stored JSON object (what
the old encoder, ``json.dumps``, wrote) is read as it is.
"""

from __future__ import annotations

import json
from typing import Any

#: The payload fields that copy a column, with their bit in the mask.
_COPIES = (("id", 1), ("user", 2), ("component", 4), ("created_at", 8))

_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_decode = json.JSONDecoder().decode


def encode(item) -> str:
    """The stored form of ``item.payload`` (a QueueItem: its columns decide what need not be repeated)."""
    payload: dict[str, Any] = item.payload
    mask = 0
    get = payload.get
    if get("id") == item.id and type(get("id")) is str:
        mask |= 1
    if get("user") == item.jid and type(get("user")) is str:
        mask |= 2
    if get("component") == item.component and type(get("component")) is str:
        mask |= 4
    created = get("created_at")
    # Not 0.0: -0.0 equals it and would come back without its sign.
    if type(created) is float and created and created == item.created_at and type(item.created_at) is float:
        mask |= 8
    if not mask:
        return _encode(payload)
    kept = {k: v for k, v in payload.items() if not (k in _NAMES and _NAMES[k] & mask)}
    return _encode([mask, kept])


_NAMES = dict(_COPIES)


def decode(text: str, row_id: str, jid: str, component: str, created_at: float) -> dict[str, Any]:
    """The payload ``encode`` stored (or the old encoder's), given the row's columns."""
    data = _decode(text)
    if type(data) is dict:
        return data
    mask, payload = data
    columns = (row_id, jid, component, created_at)
    restored = {name: value for (name, bit), value in zip(_COPIES, columns) if mask & bit}
    restored.update(payload)
    return restored
