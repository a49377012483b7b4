"""
Foreign networks, one package each, found through the ``gateway.adapters``
entry point group so a third party can ship a network as its own package.
The built-in adapters register themselves the same way (see setup.cfg).
"""

from __future__ import annotations

from importlib.metadata import entry_points

GROUP = "gateway.adapters"


class UnknownAdapter(LookupError):
    pass


def available() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def load_adapter(name: str) -> type:
    """The adapter class registered under ``name``."""
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            return ep.load()
    raise UnknownAdapter(
        f"no adapter named {name!r} (installed: {', '.join(available()) or 'none'})"
    )
