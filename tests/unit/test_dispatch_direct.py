"""
StanzaRouter calls plain observers (no arguments of their own, not one-time)
directly instead of through Twisted's CallbackList and _MethodWrapper: the same
observers in the same order, a failing one logged and the others still called,
as Twisted's EventDispatcher does, on random sets of observers of every kind.
"""

from __future__ import annotations

import random

from twisted.python import log
from twisted.words.xish import utility

from gateway.xmpp.dispatch import StanzaRouter
from tests.unit.test_dispatch import QUERIES, STANZAS, parse


def _observe(dispatcher, rng: random.Random, calls: list) -> None:
    def make(i: int, kind: str):
        def observer(el, *args, **kwargs):
            calls.append((i, el.name, args, tuple(sorted(kwargs.items()))))
            if kind == "raise":
                raise ValueError(f"observer {i}")
        return observer

    shared = make(999, "plain")
    for i in range(rng.randint(1, 12)):
        query, priority = rng.choice(QUERIES)
        kind = rng.choice(["plain", "plain", "plain", "raise", "args", "kwargs", "once", "shared"])
        fn = shared if kind == "shared" else make(i, kind)
        if kind == "args":
            dispatcher.addObserver(query, fn, priority, "extra")
        elif kind == "kwargs":
            dispatcher.addObserver(query, fn, priority, key=i)
        elif kind == "once":
            dispatcher.addOnetimeObserver(query, fn, priority)
        else:
            dispatcher.addObserver(query, fn, priority)


def _run(dispatcher, seed: int):
    rng = random.Random(seed)
    calls: list = []
    errors: list = []

    def seen(event):
        if event.get("isError"):
            errors.append(str(event["failure"].value))

    _observe(dispatcher, rng, calls)
    log.addObserver(seen)
    try:
        found = [dispatcher.dispatch(parse(rng.choice(STANZAS))) for _ in range(8)]
    finally:
        log.removeObserver(seen)
    return calls, errors, found


def test_random_observers_are_called_as_twisted_calls_them():
    for seed in range(400):
        theirs = _run(utility.EventDispatcher(), seed)
        ours = _run(StanzaRouter(), seed)
        assert ours == theirs, seed
