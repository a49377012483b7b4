"""
Benchmark: bytes the IRC adapter holds per user and per co-member, in process.

Real sessions and connections of our adapter (gateway/adapters/irc/session.py,
client.py), each on an in-memory transport and fed the lines a real IRC server
sends (CAP, 001..005 ISUPPORT, MOTD, JOIN, 353 NAMES, 366, the JOINs of later
members, a few MODEs and PRIVMSGs), for N users spread over channels. The
bridge is a recorder that counts room events and keeps none, so what is
measured is what the adapter keeps.

Three runs (N/3 and N users in small channels, N users in large ones) give
three equations, ``bytes = c + a·users + b·co-members`` (a co-member is another member of one of the
user's channels, as each user's connection sees it), solved for a (bytes per
user), b (bytes per co-member) and c (caches, free lists), overall and per allocation site
(tracemalloc, one frame, after gc). Light: a few seconds on one core.

    .venv/bin/python -m tests.benchmarks.irc_memory [--users 300] [--small 3] [--large 30] [--top 15]
"""

from __future__ import annotations

import argparse
import gc
import linecache
import os
import subprocess
import sys
import time
import tracemalloc

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogBeginner

from gateway import metrics
from gateway.adapters.irc import IRCAdapter
from gateway.model import Registration

SERVER = "irc.test"
COMPONENT = "irc.example.org"
#: What ngircd 26 sends (two 005 lines), trimmed of nothing that matters for memory.
ISUPPORT = [
    "RFC2812 IRCD=ngIRCd CHARSET=UTF-8 CASEMAPPING=ascii PREFIX=(qaohv)~&@%+ CHANTYPES=#&+ "
    "CHANMODES=beI,k,l,imMnOPQRstVz CHANLIMIT=#&+:10 :are supported on this server",
    "CHANNELLEN=50 NICKLEN=9 TOPICLEN=490 AWAYLEN=127 KICKLEN=400 MODES=5 MAXLIST=beI:50 EXCEPTS=e "
    "INVEX=I PENALTY FNC :are supported on this server",
]


class Context:
    """The IAdapterContext: counts what the adapter hands over, keeps nothing (a bridge forwards it)."""

    component = COMPONENT

    def __init__(self):
        self.clock = MemoryReactorClock()
        self.events = 0
        self.delivered = 0

    def room_backlog(self):
        return 0

    def room_event(self, event):
        self.events += 1

    def deliver(self, message):
        self.delivered += 1
        return defer.succeed(None)

    def contact_status(self, user, address, available, status):
        pass

    def checkpoint(self, message):
        return defer.succeed(None)


class Wire(StringTransport):
    """A socket that counts what is written and keeps none of it (a kernel buffer would not stay)."""

    def __init__(self):
        super().__init__()
        self.written = 0

    def write(self, data):
        self.written += len(data)

    def writeSequence(self, seq):
        for data in seq:
            self.write(data)


def feed(conn, *lines: str) -> None:
    conn.dataReceived("".join(line + "\r\n" for line in lines).encode())


def build(users: int, size: int):
    """
    ``users`` users, each in one channel of ``size`` members, joined one after
    the other: each gets the NAMES of those already in, then the JOINs of those
    after. The first member of each channel is an operator, the second voiced.
    Returns what must stay alive (the adapter holds everything else).
    """
    context = Context()
    clock = context.clock
    options = {o.key: o.default for o in IRCAdapter.options}
    options.update(servers={SERVER: {"host": "127.0.0.1", "port": 6667, "tls": False}},
                   connect_rate=0.0, connect_concurrency=users + 1, throttle_rate=0.0)
    adapter = IRCAdapter(options, context)
    conns: dict[int, object] = {}
    members: dict[str, list[int]] = {}
    for i in range(users):
        nick, channel = f"user{i}", f"#chan{i // size}"
        registration = Registration(component=COMPONENT, jid=f"user{i}@example.org")
        adapter.join(registration, "phone", f"{channel}%{SERVER}", nick, None)
        factory = clock.tcpClients.pop()[2]
        conn = factory.buildProtocol(None)
        conn.makeConnection(Wire())
        feed(conn, f":{SERVER} CAP * LS :multi-prefix sasl")
        feed(conn, f":{SERVER} CAP {nick} ACK :multi-prefix")
        feed(conn, f":{SERVER} 001 {nick} :Welcome to the Internet Relay Network {nick}!~{nick}@gw.example",
             f":{SERVER} 002 {nick} :Your host is {SERVER}, running version ngircd-26.1",
             f":{SERVER} 003 {nick} :This server has been started Thu Dec 03 2026 at 05:00:00 (UTC)",
             f":{SERVER} 004 {nick} {SERVER} ngircd-26.1 abBcCFiIoqrRswx abehiIklmMnoOPqQrRstvVz",
             *(f":{SERVER} 005 {nick} {line}" for line in ISUPPORT),
             f":{SERVER} 251 {nick} :There are {i + 1} users and 0 services on 1 servers",
             f":{SERVER} 375 {nick} :- {SERVER} message of the day",
             f":{SERVER} 372 {nick} :- Welcome!",
             f":{SERVER} 376 {nick} :End of MOTD command")
        before = members.setdefault(channel, [])
        names = " ".join(("@" if j % size == 0 else "+" if j % size == 1 else "") + f"user{j}" for j in before + [i])
        feed(conn, f":{nick}!~{nick}@gw.example JOIN :{channel}",
             f":{SERVER} 332 {nick} {channel} :Topic of {channel}",
             f":{SERVER} 353 {nick} = {channel} :{names}",
             f":{SERVER} 366 {nick} {channel} :End of NAMES list")
        for j in before:
            feed(conns[j], f":{nick}!~{nick}@gw.example JOIN :{channel}")
        before.append(i)
        conns[i] = conn
    for channel, ids in members.items():
        op = ids[0]
        for j in ids:
            feed(conns[j], f":user{op}!~user{op}@gw.example PRIVMSG {channel} :hello {channel}",
                 f":user{op}!~user{op}@gw.example MODE {channel} +v user{ids[-1]}")
    clock.advance(1.0)
    return adapter, context


def measure(users: int, size: int) -> tuple[dict, int, float, int]:
    """Bytes allocated and kept by a world of ``users`` in channels of ``size``: (by site, total, CPU s, events)."""
    gc.collect()
    before = tracemalloc.take_snapshot()
    started = time.process_time()
    world = build(users, size)
    cpu = time.process_time() - started
    gc.collect()
    after = tracemalloc.take_snapshot()
    stats = after.compare_to(before, "lineno")
    events = world[1].events
    del world
    # The adapter's gauges hold its scheduler (and so every session) until the next adapter replaces them.
    metrics.IRC_CONNECT_WAITING.labels(COMPONENT).set_function(lambda: 0)
    metrics.IRC_CONNECT_IN_FLIGHT.labels(COMPONENT).set_function(lambda: 0)
    gc.collect()
    return {stat.traceback: stat for stat in stats}, sum(stat.size_diff for stat in stats), cpu, events


def site(stat) -> str:
    frame = stat.traceback[0]
    name = frame.filename
    for root in (os.getcwd() + os.sep, os.path.dirname(os.__file__) + os.sep):
        if name.startswith(root):
            name = name[len(root):]
    name = name.replace("site-packages/", "")
    line = linecache.getline(frame.filename, frame.lineno).strip()
    return f"{name}:{frame.lineno}  {line[:70]}"


def fit(runs: list[tuple[int, int, int]]) -> tuple[float, float, float]:
    """(constant, per user, per co-member) through three runs: A and B differ in users, B and C in co-members."""
    (na, ma, ya), (nb, mb, yb), (nc, mc, yc) = runs
    member = (yc - yb) / (mc - mb)
    user = (yb - ya - member * (mb - ma)) / (nb - na)
    return ya - user * na - member * ma, user, member


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--small", type=int, default=3, help="members per channel, first two runs")
    parser.add_argument("--large", type=int, default=30, help="members per channel, third run")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    n = args.users
    # Log events are written out and forgotten, as in the gateway: not buffered by the log beginner.
    globalLogBeginner.beginLoggingTo([lambda event: None], discardBuffer=True, redirectStandardIO=False)
    build(20, 5)                                   # warm up: imports, regex caches, metric labels
    gc.collect()
    tracemalloc.start(1)
    shape = [(n // 3, args.small), (n, args.small), (n, args.large)]
    runs = []
    for users, size in shape:
        stats, total, cpu, events = measure(users, size)
        comembers = users * (size - 1)            # every user is in one channel of `size` members
        runs.append((users, comembers, total, stats))
        print(f"run: {users} users, {size} per channel ({comembers} co-members): {total / 1024:.0f} KiB "
              f"({total / users / 1024:.2f} KiB/user all told), {events} room events, {cpu:.1f} s CPU")
    tracemalloc.stop()
    constant, per_user, per_member = fit([(u, m, t) for u, m, t, _ in runs])
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "gateway"],
                               capture_output=True, text=True, check=True).stdout.strip()
        commit += " (+ uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    print(f"\ncommit {commit}, python {sys.version.split()[0]}")
    print(f"per user:      {per_user:8.0f} B = {per_user / 1024:.2f} KiB   (goal: at most 7 KiB)")
    print(f"per co-member: {per_member:8.0f} B = {per_member / 1024:.3f} KiB  (goal: at most 0.17 KiB)")
    print(f"constant:      {constant:8.0f} B (caches and free lists, not per user)")

    keys = {key: stat for *_, stats in runs for key, stat in stats.items()}
    fits = []
    for key, stat in keys.items():
        ys = [(u, m, stats[key].size_diff if key in stats else 0) for u, m, _, stats in runs]
        fits.append((*fit(ys)[1:], stat))
    print(f"\ntop {args.top} allocation sites, bytes per user:")
    for a, _, stat in sorted(fits, key=lambda f: -f[0])[:args.top]:
        print(f"  {a:7.0f}  {site(stat)}")
    print(f"\ntop {args.top} allocation sites, bytes per co-member:")
    for _, b, stat in sorted(fits, key=lambda f: -f[1])[:args.top]:
        print(f"  {b:7.1f}  {site(stat)}")


if __name__ == "__main__":
    main()
