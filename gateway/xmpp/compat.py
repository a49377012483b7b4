"""
Make wokkel 18.0.0 import cleanly on current Twisted.

wokkel was last released before Twisted removed ``twisted.python.compat._PY3``
and the ``twisted.python.constants`` module, and it still calls names that
Twisted now only keeps as deprecated aliases (``unicode``, ``iteritems``,
``itervalues``, ``StringType``). Every module of ours that imports wokkel
imports this module first, so wokkel works under ``-W error`` too.

Deprecated names are removed from Twisted's deprecation table rather than
probed with ``hasattr``: probing a deprecated module attribute emits the very
warning we are trying to avoid.
"""

import sys

import constantly
from twisted.python import compat as _compat


def _iteritems(d):
    return d.items()


def _itervalues(d):
    return d.values()


def install() -> None:
    module = sys.modules["twisted.python.compat"]
    try:
        table = object.__getattribute__(module, "_deprecatedAttributes")
    except AttributeError:
        table = {}
    for name in ("unicode", "StringType", "iteritems", "itervalues"):
        table.pop(name, None)
    replacements = {
        "_PY3": True,
        "unicode": str,
        "StringType": str,
        "iteritems": _iteritems,
        "itervalues": _itervalues,
    }
    for name, value in replacements.items():
        setattr(module, name, value)
    sys.modules.setdefault("twisted.python.constants", constantly)
    import twisted.python

    if not hasattr(twisted.python, "constants"):
        twisted.python.constants = constantly


install()
del _compat
