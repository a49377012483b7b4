"""
Benchmark: the gateway's CPU per IRC line, both ways, in one process (no sockets, no servers).

The real stack on in-memory transports: the XEP-0114 component (parser, access
filter, handlers, gateway/xmpp/muc.py, gateway/xmpp/messages.py StanzaOutput),
the Bridge (room-event path, conversations, the room archive into a real SQLite
registry with group commit) and the IRC adapter (gateway/adapters/irc/session.py,
client.py) with its connection on a StringTransport. This script plays both
servers: it joins an XMPP user to a channel through a presence, answers the IRC
registration and the JOIN as ngircd does, then

  IRC → XMPP   writes N ``PRIVMSG #chan`` lines from another nick into the IRC
               connection (200 per read, the reactor running between reads) and stops
               the clock when N groupchat stanzas were written on the XMPP stream
               and the archive's writes are committed;
  XMPP → IRC   writes N groupchat ``<message/>`` stanzas from the user (200 per read)
               and stops the clock when N ``PRIVMSG`` lines were written to the IRC
               connection (and their reflections to the user on the XMPP stream).

CPU is ``time.process_time`` (the whole process: the reactor thread and the
registry's database thread), best of ``--repeats`` runs, with the spread.
Not included: the kernel's socket work, Prosody, the IRC server, biboumi —
``irc_throughput`` measures those end to end (it needs a quiet machine).

    .venv/bin/python -m tests.benchmarks.irc_cpu [--lines 5000] [--repeats 5] [--archive on|off]
                     [--calls] [--profile DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, reactor, task
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogBeginner

from gateway.adapters.irc import IRCAdapter
from gateway.service import freeze_startup_objects, tune_gc
from tests.unit.wire import Wire

SERVER = "irc.test"
CHANNEL = "#bench"
NICK = "alice"
USER = "alice@example.org"
RESOURCE = "phone"
CHUNK = 200
#: What ngircd 26 sends (two 005 lines).
ISUPPORT = [
    "RFC2812 IRCD=ngIRCd CHARSET=UTF-8 CASEMAPPING=ascii PREFIX=(qaohv)~&@%+ CHANTYPES=#&+ "
    "CHANMODES=beI,k,l,imMnOPQRstVz CHANLIMIT=#&+:10 :are supported on this server",
    "CHANNELLEN=50 NICKLEN=9 TOPICLEN=490 AWAYLEN=127 KICKLEN=400 MODES=5 MAXLIST=beI:50 EXCEPTS=e "
    "INVEX=I PENALTY FNC :are supported on this server",
]


class Counting(StringTransport):
    """A socket that counts what it is given (a needle per write) and keeps it only while ``keep``."""

    def __init__(self, needle: bytes):
        super().__init__()
        self.needle = needle
        self.count = 0
        self.keep = True

    def write(self, data):
        self.count += data.count(self.needle)
        if self.keep:
            super().write(data)

    def writeSequence(self, seq):
        for data in seq:
            self.write(data)


class Bench:
    def __init__(self, work: str, archive: bool):
        self.clock = MemoryReactorClock()          # the gateway's timers: nothing fires unless advanced
        options = {o.key: o.default for o in IRCAdapter.options}
        options.update(servers={SERVER: {"host": "127.0.0.1", "port": 6667, "tls": False}}, throttle_rate=0.0,
                       connect_rate=0.0)
        self.wire = Wire(os.path.join(work, "r.sqlite"), options=options, limits={"rate": 1e9, "burst": 10 ** 9},
                         clock=self.clock, adapter=IRCAdapter)
        if not archive:
            self.wire.bridge.archive = None
        self.domain = self.wire.bridge.component
        self.room_jid = f"{CHANNEL}%{SERVER}@{self.domain}"
        self.irc = None

    def feed_irc(self, *lines: str) -> None:
        self.irc.dataReceived("".join(line + "\r\n" for line in lines).encode())

    @defer.inlineCallbacks
    def until(self, predicate, what: str, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            self.clock.advance(0)
            yield task.deferLater(reactor, 0.001, lambda: None)

    @defer.inlineCallbacks
    def start(self):
        yield self.wire.start()
        self.xmpp = Counting(b"<body>")
        self.wire.xs.transport = self.xmpp
        self.wire.transport = self.xmpp
        self.wire.feed(f"<presence from='{USER}/{RESOURCE}' to='{self.room_jid}/{NICK}'>"
                       "<x xmlns='http://jabber.org/protocol/muc'/></presence>")
        yield self.until(lambda: self.clock.tcpClients, "the IRC connection attempt")
        factory = self.clock.tcpClients[0][2]
        self.irc = factory.buildProtocol(None)
        self.irc_out = Counting(b"PRIVMSG ")
        self.irc.makeConnection(self.irc_out)
        self.clock.advance(5)                     # the registration goes out even if the server says nothing first
        self.feed_irc(f":{SERVER} 001 {NICK} :Welcome to the Internet Relay Network {NICK}!~a@gw.example",
                      f":{SERVER} 002 {NICK} :Your host is {SERVER}, running version ngircd-26.1",
                      f":{SERVER} 004 {NICK} {SERVER} ngircd-26.1 abBcCFiIoqrRswx abehiIklmMnoOPqQrRstvVz",
                      *(f":{SERVER} 005 {NICK} {line}" for line in ISUPPORT),
                      f":{SERVER} 376 {NICK} :End of MOTD command")
        yield self.until(lambda: b"JOIN" in self.irc_out.value(), "the JOIN")
        self.feed_irc(f":{NICK}!~a@gw.example JOIN :{CHANNEL}",
                      f":{SERVER} 332 {NICK} {CHANNEL} :Topic of the bench",
                      f":{SERVER} 353 {NICK} = {CHANNEL} :{NICK} @bob +carol dave",
                      f":{SERVER} 366 {NICK} {CHANNEL} :End of NAMES list")
        yield self.until(lambda: b"status code='110'" in self.xmpp.value() or b'status code="110"' in self.xmpp.value(),
                         "the self-presence")
        self.xmpp.keep = self.irc_out.keep = False
        self.xmpp.clear()
        self.irc_out.clear()

    @defer.inlineCallbacks
    def irc_to_xmpp(self, n: int, first: int):
        target = self.xmpp.count + n
        for start in range(first, first + n, CHUNK):
            self.irc.dataReceived("".join(f":bob!~b@peer.example PRIVMSG {CHANNEL} :line {i} of the benchmark, "
                                          "a sentence of ordinary length\r\n"
                                          for i in range(start, min(start + CHUNK, first + n))).encode())
            yield task.deferLater(reactor, 0, lambda: None)
        yield self.until(lambda: self.xmpp.count >= target, "the groupchat stanzas")
        yield self.wire.registry.settled()
        assert self.xmpp.count == target, (self.xmpp.count, target)

    @defer.inlineCallbacks
    def xmpp_to_irc(self, n: int, first: int):
        target = self.irc_out.count + n
        for start in range(first, first + n, CHUNK):
            self.wire.feed("".join(f"<message from='{USER}/{RESOURCE}' to='{self.room_jid}' type='groupchat' "
                                   f"id='x{i}'><body>line {i} of the benchmark, a sentence of ordinary length</body>"
                                   "</message>" for i in range(start, min(start + CHUNK, first + n))))
            yield task.deferLater(reactor, 0, lambda: None)
        yield self.until(lambda: self.irc_out.count >= target, "the PRIVMSG lines")
        assert self.irc_out.count == target, (self.irc_out.count, target)


@defer.inlineCallbacks
def run(args) -> dict:
    work = tempfile.mkdtemp(prefix="gwirccpu-", dir="/tmp")
    bench = Bench(work, args.archive == "on")
    try:
        yield bench.start()
        # Warm-up: caches, the registration, the first transactions.
        yield bench.irc_to_xmpp(200, 0)
        yield bench.xmpp_to_irc(200, 0)
        tune_gc()
        freeze_startup_objects()
        results: dict[str, list[float]] = {"irc_to_xmpp": [], "xmpp_to_irc": []}
        profiles = {name: cProfile.Profile() for name in results} if args.profile else {}
        first = 1000
        for _ in range(args.repeats):
            for name in results:
                step = getattr(bench, name)
                profiler = profiles.get(name)
                if profiler:
                    profiler.enable()
                cpu0 = time.process_time()
                yield step(args.lines, first)
                used = time.process_time() - cpu0
                if profiler:
                    profiler.disable()
                results[name].append(used / args.lines * 1e6)
                first += args.lines
        calls: dict[str, float] = {}
        if args.calls:
            # Function calls per line (Python and C, as sys.setprofile sees them): unlike CPU time,
            # the same on a busy machine, so it shows a change the noise of a shared machine hides.
            for name in results:
                count = [0]

                def hook(frame, event, arg, count=count):
                    if event == "call" or event == "c_call":
                        count[0] += 1

                sys.setprofile(hook)
                try:
                    yield getattr(bench, name)(args.lines, first)
                finally:
                    sys.setprofile(None)
                first += args.lines
                calls[name] = count[0] / args.lines
        results["calls"] = calls
        for name, profiler in profiles.items():
            os.makedirs(args.profile, exist_ok=True)
            profiler.dump_stats(os.path.join(args.profile, f"{name}.pstats"))
        return results
    finally:
        bench.wire.stop()
        shutil.rmtree(work, ignore_errors=True)


def describe() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "gateway"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=5000, help="lines per direction per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--archive", choices=("on", "off"), default="on",
                        help="the room archive ([retention] room_archive), on by default as in the gateway")
    parser.add_argument("--calls", action="store_true",
                        help="also count function calls per line (one more run each way, under sys.setprofile)")
    parser.add_argument("--profile", metavar="DIR", help="cProfile each direction into DIR/<direction>.pstats")
    args = parser.parse_args()
    # Log events are written out and forgotten, as in the gateway.
    globalLogBeginner.beginLoggingTo([lambda event: None], discardBuffer=True, redirectStandardIO=False)
    from tests.benchmarks.core_path import run_in_reactor
    result = run_in_reactor(run, args)
    print(f"commit {describe()}, python {sys.version.split()[0]}, archive {args.archive}, "
          f"{args.lines} lines x {args.repeats} repeats")
    for name, label in (("irc_to_xmpp", "IRC → XMPP"), ("xmpp_to_irc", "XMPP → IRC")):
        runs = sorted(result[name])
        calls = f", {result['calls'][name]:.0f} function calls per line" if name in result["calls"] else ""
        print(f"{label}: {runs[0]:6.1f} µs CPU per line (best; spread {runs[0]:.1f}–{runs[-1]:.1f}, "
              f"median {runs[len(runs) // 2]:.1f}){calls}")
    if args.profile:
        for name in ("irc_to_xmpp", "xmpp_to_irc"):
            print(f"\n== {name}")
            pstats.Stats(os.path.join(args.profile, f"{name}.pstats")).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
