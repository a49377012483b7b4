"""
Benchmark: the gateway's own cost per message, in one process, without an XMPP server.

The real component stack (parser, access filter, handlers, bridge, outbox, echo
adapter, SQLite registry with synchronous=FULL) on an in-memory transport; this
script plays the XMPP server: it writes N messages from a user to echo contacts
as one would arrive on the stream, answers the delivery barrier's pings as a
server does, and stops the clock when every echo was written back. What it
reports is the gateway's CPU per round trip with nothing else on the machine's
critical path, so a change to the hot path shows as a change in one number;
``echo_throughput`` is the end-to-end figure against a bare component.

    .venv/bin/python -m tests.benchmarks.core_path [--messages 20000] [--contacts 20] [--profile FILE] [--calls]

``--calls`` counts every Python function call of the measured part (cProfile)
and prints them per message: exact and the same on a loaded machine, where the
CPU figure moves by a fifth from one run to the next.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import re
import pstats
import resource
import sys
import tempfile
import time

from twisted.internet import defer, reactor, task

from gateway.service import freeze_startup_objects, tune_gc
from tests.unit.wire import DOMAIN, Wire

PING = re.compile(rb"""<iq ([^>]*)><ping xmlns=["']urn:xmpp:ping["']\s*/></iq>""")


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Server:
    """Reads what the gateway writes: counts echoes, routes the gateway's pings to itself back."""

    def __init__(self, wire: Wire):
        self.wire = wire
        self.echoes = 0
        self.buffer = b""

    def pump(self) -> None:
        data = self.wire.transport.value()
        self.wire.transport.clear()
        if not data:
            return
        data = self.buffer + data
        cut = data.rfind(b">") + 1
        data, self.buffer = data[:cut], data[cut:]
        self.echoes += data.count(b"<body>")
        # The barrier pings one of the component's own JIDs: the server routes the ping back to us.
        pings = [m.group(0) for m in PING.finditer(data)]
        if pings:
            self.wire.xs.dataReceived(b"".join(pings))


@defer.inlineCallbacks
def run(args) -> dict:
    work = tempfile.mkdtemp(prefix="gwcore-", dir="/tmp")
    wire = Wire(os.path.join(work, "r.sqlite"), limits={"rate": 1e9, "burst": 10 ** 9})
    yield wire.start()
    reply = yield wire.register("bench@example.org/b", "bench")
    assert reply.getAttribute("type") == "result", reply.toXml()
    wire.sent()
    server = Server(wire)
    poll = task.LoopingCall(server.pump)
    poll.start(0.0005)
    # Warm-up: caches, the registration, the first transactions.
    for i in range(50):
        wire.feed(f"<message from='bench@example.org/b' to='w@{DOMAIN}' type='chat' id='w{i}'><body>w{i}</body>"
                  "</message>")
    while server.echoes < 50:
        yield task.deferLater(reactor, 0.001, lambda: None)
    server.echoes = 0
    # As `xmpp-gateway run` sets the process up (gateway/service.py).
    tune_gc()
    freeze_startup_objects()
    profiler = cProfile.Profile() if args.profile or args.calls else None
    start, cpu0 = time.perf_counter(), cpu()
    if profiler:
        profiler.enable()
    chunk = 200
    for first in range(0, args.messages, chunk):
        # As the server writes them: a burst per read, then the reactor runs.
        wire.feed("".join(f"<message from='bench@example.org/b' to='c{i % args.contacts}@{DOMAIN}' type='chat' "
                          f"id='m{i}'><body>t{i}</body></message>"
                          for i in range(first, min(first + chunk, args.messages))))
        yield task.deferLater(reactor, 0, lambda: None)
    deadline = time.monotonic() + 300
    while server.echoes < args.messages and time.monotonic() < deadline:
        yield task.deferLater(reactor, 0.001, lambda: None)
    if profiler:
        profiler.disable()
    elapsed, used = time.perf_counter() - start, cpu() - cpu0
    assert server.echoes == args.messages, f"{server.echoes} echoes of {args.messages}"
    # Everything delivered is also confirmed: the queue drains.
    while True:
        depth = yield wire.registry.queue_depth(DOMAIN)
        if not depth["out"] and not depth["in"]:
            break
        yield task.deferLater(reactor, 0.01, lambda: None)
    poll.stop()
    wire.stop()
    result = {"rate": args.messages / elapsed, "cpu_us": used / args.messages * 1e6}
    if profiler:
        profiler.create_stats()
        result["stats"] = profiler.stats
        if args.profile:
            profiler.dump_stats(args.profile)
    return result


def print_calls(stats: dict, messages: int, top: int = 40) -> None:
    """Function calls per message: in all, and the functions called most."""
    total = sum(row[1] for row in stats.values())
    print(f"{total / messages:.1f} function calls per message ({total} in all)")
    rows = sorted(stats.items(), key=lambda kv: -kv[1][1])[:top]
    for (filename, line, name), row in rows:
        where = filename.rsplit("site-packages/", 1)[-1].rsplit("/wt-", 1)[-1]
        print(f"  {row[1] / messages:8.2f}  {where}:{line}({name})")


def run_in_reactor(run, args) -> dict:
    """Run the benchmark's ``run(args)`` Deferred in the reactor and return what it gave (or exit 1
    with its traceback)."""
    result = {}

    def go():
        d = run(args)
        d.addCallback(lambda r: result.update(r))
        d.addErrback(lambda f: (result.update(error=f), None))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    if "error" in result:
        result["error"].printTraceback()
        sys.exit(1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--contacts", type=int, default=20)
    parser.add_argument("--profile", metavar="FILE", help="cProfile the measured part into FILE (pstats)")
    parser.add_argument("--calls", action="store_true", help="print exact function calls per message (cProfile)")
    args = parser.parse_args()
    result = run_in_reactor(run, args)
    print(f"{args.messages} echo round trips over {args.contacts} contacts, in process: "
          f"{result['rate']:.0f} msgs/s, {result['cpu_us']:.0f} µs CPU per message")
    if args.calls:
        print_calls(result["stats"], args.messages)
    if args.profile:
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
