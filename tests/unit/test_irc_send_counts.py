"""
What a room message XMPP → IRC costs, counted in a way the machine's load does
not change (issue 12): the function calls per line under ``sys.setprofile``,
through the real stack in memory (tests/benchmarks/irc_cpu.py's ``Bench``:
component, dispatch, MUC handler, bridge, IRC adapter on a StringTransport,
SQLite registry with the room archive). And the counters read at scrape time
(``metrics.tally``) export what Prometheus' own values would.
"""

from __future__ import annotations

import shutil
import sys
import tempfile

import pytest_twisted
from prometheus_client import CollectorRegistry, Counter, generate_latest
from twisted.internet import defer

from gateway import metrics
from tests.benchmarks.irc_cpu import Bench

#: Calls per XMPP → IRC room line: 221 before metrics.tally, 207 with it (the 14 a line spent in
#: three labelled counters' ``inc``). A few calls of slack for caches and the reactor's own turns.
XMPP_TO_IRC_CALLS = 211
LINES = 300


@defer.inlineCallbacks
def _calls_per_line(bench: Bench, first: int) -> float:
    count = [0]

    def hook(frame, event, arg):
        if event == "call" or event == "c_call":
            count[0] += 1

    sys.setprofile(hook)
    try:
        yield bench.xmpp_to_irc(LINES, first)
    finally:
        sys.setprofile(None)
    return count[0] / LINES


@pytest_twisted.inlineCallbacks
def test_a_room_line_to_irc_costs_at_most_this_many_calls():
    work = tempfile.mkdtemp(prefix="gwcalls-", dir="/tmp")
    bench = Bench(work, archive=True)
    try:
        yield bench.start()
        yield bench.xmpp_to_irc(200, 0)          # warm-up: caches, the registration, first transactions
        sample = ("xmpp_gateway_stanzas_total", {"component": bench.domain, "direction": "in", "type": "message"})
        before = metrics.REGISTRY.get_sample_value(*sample)
        sent = metrics.REGISTRY.get_sample_value("xmpp_gateway_messages_total",
                                                 {"component": bench.domain, "direction": "out"})
        calls = yield _calls_per_line(bench, 1000)
        assert calls <= XMPP_TO_IRC_CALLS, f"{calls:.1f} calls per XMPP → IRC line (bound {XMPP_TO_IRC_CALLS})"
        # Still counted, as scraped: every groupchat stanza in, every line out.
        assert metrics.REGISTRY.get_sample_value(*sample) == before + LINES
        assert metrics.REGISTRY.get_sample_value("xmpp_gateway_messages_total",
                                                 {"component": bench.domain, "direction": "out"}) == sent + LINES
    finally:
        bench.wire.stop()
        shutil.rmtree(work, ignore_errors=True)


def _exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_a_tally_exports_what_the_counter_would():
    plain, tallied = CollectorRegistry(), CollectorRegistry()
    a = Counter("gw_t", "help", ["x"], registry=plain)
    b = Counter("gw_t", "help", ["x"], registry=tallied)
    a.labels("one").inc(2)
    b.labels("one").inc(2)
    t = metrics.tally(b.labels("one"))
    assert metrics.tally(b.labels("one")) is t        # same child, same tally
    assert t.n == 2                                   # what it counted before is kept
    for _ in range(5):
        a.labels("one").inc()
        t.n += 1
    a.labels("one").inc(1.5)
    b.labels("one").inc(1.5)                          # inc() still works on a tallied child
    a.labels("two").inc()
    b.labels("two").inc()
    assert _exposition(plain) == _exposition(tallied)
    assert "gw_t_total{x=\"one\"} 8.5" in _exposition(tallied)
