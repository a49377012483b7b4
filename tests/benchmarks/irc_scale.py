"""
Benchmark: N IRC users through xmpp-gateway and through biboumi 9.0, one after
the other against the same ngircd and the same Prosody, then a restart of the
ngircd with everyone joined (issue 12).

Users are cheap: one raw XEP-0114 component of the Prosody (``load.localhost``)
is every user (``u0@load.localhost``...). It sends the presences that join N
users to rooms spread over C channels (``--channels``, 100 by default), all at
once, through the gateway's IRC component, and counts the self-presences
(status 110) that come back. Per gateway it prints the RSS before and after
(KiB/user), the join time and the CPU the gateway used; then ngircd is
restarted with everyone joined and it prints the users rejoined (a new
self-presence after the restart), the time until all were, the peak
connection rate seen on ngircd's side (established sockets of its port in
/proc/net/tcp, sampled every 0.25 s, the most new in one second), the peak RSS
(VmHWM) and the users left out. A client told it left (an unavailable
self-presence or an error) rejoins after 2 s, as clients do; how many
re-sent joins there were is printed too.

ngircd is the test fixture's: MaxConnections and MaxConnectionsIP 0 (no limit),
MaxPenaltyTime 0 (no flood penalty), MaxJoins 0; its listen backlog is hard-coded
to 10 (reference/irc-servers-2.md §C). Ours runs with connect_rate 200/s and
connect_concurrency 32 (``--rate``, ``--concurrency``); biboumi with
throttle_limit -1, set per user by ad-hoc command before its clock starts.

    .venv/bin/python -m tests.benchmarks.irc_scale [--users 500] [--channels 100]
        [--only ours|biboumi] [--settle 5] [--heap] [--smaps] [--storm-timeout 300]

``--heap`` runs ours under tracemalloc (tests/benchmarks/heap_shim.py, imported by
``python -c`` before the gateway) and prints its top allocation sites once all
have joined (tracing slows the gateway: do not compare its times). ``--smaps``
prints /proc/PID/smaps_rollup of each gateway once all have joined.

Heavy above a few hundred users: on a shared machine run it when nobody else measures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

from gateway.testing.ngircd import Ngircd
from gateway.testing.process import Server, wait_for
from gateway.testing.prosody import Prosody
from tests.benchmarks.echo_throughput import bench_config, cpu_seconds
from tests.integration import irc_support

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
STATUS = f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}status"
LOAD = "load.localhost"
LOAD_SECRET = "load-secret"


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def established(port: int) -> int:
    """Established sockets whose local port is ``port`` (the server's side of each client connection)."""
    want = f":{port:04X}"
    count = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split(None, 4)
                    if parts[1].endswith(want) and parts[3] == "01":
                        count += 1
        except FileNotFoundError:
            pass
    return count


class ConnectionSampler(threading.Thread):
    """Counts ngircd's established client sockets every 0.25 s; the peak rise in one second is the connect rate."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[tuple[float, int]] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            self.samples.append((time.monotonic(), established(self.port)))
            time.sleep(0.25)

    def peak_rate(self) -> float:
        best = 0
        j = 0
        for i, (t, n) in enumerate(self.samples):
            while self.samples[j][0] < t - 1.0:
                j += 1
            best = max(best, n - min(c for _, c in self.samples[j:i + 1]))
        return best


class LoadComponent(irc_support.LoadComponent):
    """Every user, on one component stream; what comes back is counted per user and dropped."""

    READ_SIZE = 262144

    def __init__(self, port: int, rejoin_delay: float = 2.0):
        super().__init__(port, LOAD, LOAD_SECRET)
        self.rejoin_delay = rejoin_delay
        #: user JID -> (monotonic time, True joined / False told it left) of its latest self-presence.
        self.own: dict[str, tuple[float, bool]] = {}
        self.joined_at: dict[str, float] = {}
        self.iq_waiters: dict[str, asyncio.Future] = {}
        self.rooms: dict[str, str] = {}
        self.rejoin = False
        self.resent = 0
        self.errors = 0
        self.count = 0

    def on_stanza(self, el) -> None:
        """Counted, not kept."""
        self.count += 1
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "iq":
            waiter = self.iq_waiters.pop(el.get("id"), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(el)
        elif tag == "presence":
            user = el.get("to", "").split("/", 1)[0]
            kind = el.get("type")
            own = any(s.get("code") == "110" for s in el.findall(STATUS))
            if kind == "error":
                self.errors += 1
            if kind == "error" and el.get("from", "").split("/", 1)[0] == self.rooms.get(user, "").split("/", 1)[0]:
                self._left(user)
            elif own and kind is None:
                self.own[user] = (time.monotonic(), True)
                self.joined_at.setdefault(user, time.monotonic())
            elif own and kind == "unavailable":
                self._left(user)

    def _left(self, user: str) -> None:
        self.own[user] = (time.monotonic(), False)
        if self.rejoin and user in self.rooms:
            self.resent += 1
            asyncio.get_running_loop().call_later(self.rejoin_delay, self.join, user)

    def join(self, user: str) -> None:
        self.writer.write(f"<presence from='{user}/r' to='{self.rooms[user]}'><x xmlns='{NS_MUC}'/></presence>"
                          .encode())

    async def iq(self, sender: str, to: str, payload: str, iq_id: str) -> ET.Element:
        waiter = asyncio.get_running_loop().create_future()
        self.iq_waiters[iq_id] = waiter
        self.writer.write(f"<iq type='set' id='{iq_id}' from='{sender}/r' to='{to}'>{payload}</iq>".encode())
        return await asyncio.wait_for(waiter, 30)

    async def command(self, sender: str, to: str, node: str, fields: dict[str, list[str]], iq_id: str) -> None:
        ns = "http://jabber.org/protocol/commands"
        first = await self.iq(sender, to, f"<command xmlns='{ns}' node='{node}' action='execute'/>", iq_id + "a")
        session = first.find(f"{{{ns}}}command").get("sessionid")
        values = "".join(f"<field var='{k}'>" + "".join(f"<value>{v}</value>" for v in vs) + "</field>"
                         for k, vs in fields.items())
        await self.iq(sender, to, f"<command xmlns='{ns}' node='{node}' sessionid='{session}' action='complete'>"
                                  f"<x xmlns='jabber:x:data' type='submit'>{values}</x></command>", iq_id + "b")

    async def until(self, predicate, timeout: float) -> bool:
        """``wait``, saying whether it came instead of failing."""
        try:
            await self.wait(predicate, timeout, "")
        except AssertionError:
            return False
        return True


def start_ours(work: str, component_port: int, ircd_port: int, args) -> Server:
    path = os.path.join(work, "ours")
    os.makedirs(path)
    config = bench_config(path, component_port, f"""[[components]]
domain = "irc-gw.localhost"
secret = "gw-secret"
adapter = "irc"
[components.options]
throttle_rate = 0.0
connect_rate = {args.rate}
connect_concurrency = {args.concurrency}
servers = {{ "localhost" = {{ host = "127.0.0.1", port = {ircd_port}, tls = false }} }}
""")
    with open(config) as f:
        text = f.read().replace('allowed_domains = ["localhost"]', f'allowed_domains = ["localhost", "{LOAD}"]')
    with open(config, "w") as f:
        f.write(text)
    env = dict(os.environ)
    if args.heap:
        env["GATEWAY_HEAP_OUT"] = os.path.join(path, "heap.txt")
        argv = [sys.executable, "-c", "import sys, tests.benchmarks.heap_shim; from gateway.cli import main; "
                "main(sys.argv[1:])", "run", config]
    else:
        argv = [sys.executable, "-m", "gateway.cli", "run", config]
    gateway = Server("ours", argv, os.path.join(path, "gateway.log"), env=env).start()
    gateway.wait_log(": authenticated", timeout=30)
    return gateway


def start_biboumi(work: str, component_port: int) -> Server:
    """biboumi 9.0 as component irc-bb.localhost of the Prosody (irc_throughput uses it too)."""
    bdir = os.path.join(work, "biboumi")
    os.makedirs(bdir)
    with open(os.path.join(bdir, "biboumi.cfg"), "w") as f:
        f.write(f"hostname=irc-bb.localhost\npassword=bb-secret\nxmpp_server_ip=127.0.0.1\n"
                f"port={component_port}\nadmin=admin@localhost\nidentd_port=0\n"
                f"db_name={bdir}/biboumi.sqlite\nlog_file=\nlog_level=1\nrealname_customization=true\n"
                f"realname_from_jid=false\nca_file=\npolicy_directory={bdir}\n")
    biboumi = Server("biboumi", ["biboumi", os.path.join(bdir, "biboumi.cfg")],
                     os.path.join(bdir, "biboumi.log")).start()
    try:
        wait_for(lambda: "Authenticated with the XMPP server" in biboumi.log(), 20, "biboumi")
    except BaseException:
        biboumi.stop()
        raise
    return biboumi


async def run_one(name: str, gateway: Server, room_of, ircd: Ngircd, prosody: Prosody, args,
                  before_join=None) -> dict:
    pid = gateway.proc.pid
    load = await LoadComponent(prosody.component_port).start()
    users = [f"u{i}@{LOAD}" for i in range(args.users)]
    for i, user in enumerate(users):
        load.rooms[user] = f"{room_of(i % args.channels)}/ld{i}"
    result: dict = {}
    try:
        if before_join is not None:
            await before_join(load, users)
        if args.heap and name == "ours":
            os.kill(pid, signal.SIGUSR2)                 # the heap's baseline, before the joins
        await asyncio.sleep(args.settle)
        rss0 = status_kb(pid, "VmRSS")
        cpu0 = cpu_seconds(pid)
        start = time.monotonic()
        for user in users:
            load.join(user)
        await load.writer.drain()
        ok = await load.until(lambda: len(load.joined_at) >= args.users, args.join_timeout)
        result["joined"] = len(load.joined_at)
        result["join_s"] = (max(load.joined_at.values()) - start) if ok else float("nan")
        result["join_cpu"] = cpu_seconds(pid) - cpu0
        await asyncio.sleep(args.settle)
        rss1 = status_kb(pid, "VmRSS")
        result["rss0"], result["rss1"] = rss0, rss1
        result["kib_user"] = (rss1 - rss0) / args.users
        if args.smaps:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                result["smaps"] = f.read()
        if args.heap and name == "ours":
            heap = os.path.join(os.path.dirname(gateway.logfile), "heap.txt")
            os.kill(pid, signal.SIGUSR1)
            wait_for(lambda: os.path.exists(heap), 120, "heap snapshot")
            with open(heap) as f:
                result["heap"] = f.read()

        # The storm: ngircd restarts with everyone joined.
        load.rejoin = True
        sampler = ConnectionSampler(ircd.port)
        cpu0 = cpu_seconds(pid)
        await asyncio.to_thread(ircd.restart)
        restarted = time.monotonic()
        sampler.start()

        def back() -> int:
            return sum(1 for t, joined in load.own.values() if joined and t >= restarted)

        await load.until(lambda: back() >= args.users, args.storm_timeout)
        sampler.running = False
        sampler.join()
        times = [t for t, joined in load.own.values() if joined and t >= restarted]
        result["rejoined"] = len(times)
        result["all_at"] = (max(times) - restarted) if len(times) >= args.users else float("nan")
        result["peak_rate"] = sampler.peak_rate()
        result["on_irc"] = sampler.samples[-1][1] if sampler.samples else 0
        result["storm_cpu"] = cpu_seconds(pid) - cpu0
        result["peak_rss"] = status_kb(pid, "VmHWM")
        result["left_out"] = args.users - len(times)
        result["resent"] = load.resent
        result["errors"] = load.errors
    finally:
        await load.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--only", choices=("ours", "biboumi"))
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before and after the joins, for RSS")
    parser.add_argument("--rate", type=float, default=200.0, help="our connect_rate")
    parser.add_argument("--concurrency", type=int, default=32, help="our connect_concurrency")
    parser.add_argument("--join-timeout", type=float, default=600.0)
    parser.add_argument("--storm-timeout", type=float, default=300.0)
    parser.add_argument("--heap", action="store_true", help="tracemalloc in our gateway: top allocation sites")
    parser.add_argument("--smaps", action="store_true", help="print each gateway's /proc/PID/smaps_rollup")
    args = parser.parse_args()
    run_biboumi = args.only != "ours"
    if run_biboumi and not shutil.which("biboumi"):
        sys.exit("biboumi is not installed: apt-get install biboumi (or pass --only ours)")

    work = tempfile.mkdtemp(prefix="gwircscale-", dir="/tmp")
    os.chmod(work, 0o755)
    prosody = Prosody(os.path.join(work, "prosody"), {"irc-gw.localhost": "gw-secret",
                                                      "irc-bb.localhost": "bb-secret", LOAD: LOAD_SECRET}).start()
    ircd = Ngircd(os.path.join(work, "ngircd")).start()
    results: dict[str, dict] = {}

    async def ours():
        gateway = start_ours(work, prosody.component_port, ircd.port, args)
        try:
            results["ours"] = await run_one("ours", gateway, lambda c: f"#c{c}%localhost@irc-gw.localhost",
                                            ircd, prosody, args)
        finally:
            gateway.stop()

    async def theirs():
        biboumi = start_biboumi(work, prosody.component_port)

        async def configure(load: LoadComponent, users: list[str]) -> None:
            for first in range(0, len(users), 50):
                await asyncio.gather(*(load.command(u, "127.0.0.1@irc-bb.localhost", "configure",
                                                    {"ports": [str(ircd.port)], "tls_ports": [],
                                                     "throttle_limit": ["-1"]}, f"cfg{n}")
                                       for n, u in enumerate(users[first:first + 50], first)))

        try:
            results["biboumi"] = await run_one("biboumi", biboumi, lambda c: f"#c{c}%127.0.0.1@irc-bb.localhost",
                                               ircd, prosody, args, before_join=configure)
        finally:
            biboumi.stop()

    async def run_all():
        if args.only != "biboumi":
            await ours()
        if run_biboumi:
            await asyncio.to_thread(ircd.restart)      # a fresh server: nobody left from the first run
            await theirs()

    try:
        asyncio.run(run_all())
    finally:
        ircd.stop()
        prosody.stop()
    print(f"\n{args.users} users in {args.channels} channels ({args.users / args.channels:g} per channel), "
          f"one ngircd, Prosody; ours: connect_rate {args.rate:g}/s, connect_concurrency {args.concurrency}\n")
    print(f"{'gateway':<9} {'joined':>7} {'RSS before':>11} {'RSS after':>10} {'KiB/user':>9} {'join s':>7} "
          f"{'CPU s':>6}")
    for name, r in results.items():
        print(f"{name:<9} {r['joined']:>7} {r['rss0'] / 1024:>9.1f}Mi {r['rss1'] / 1024:>8.1f}Mi "
              f"{r['kib_user']:>9.1f} {r['join_s']:>7.1f} {r['join_cpu']:>6.1f}")
    print("\nngircd restarted with everyone joined:\n")
    print(f"{'gateway':<9} {'rejoined':>8} {'all at s':>8} {'peak conn/s':>11} {'on IRC':>7} {'CPU s':>6} "
          f"{'peak RSS':>9} {'left out':>8} {'client re-joins':>15}")
    for name, r in results.items():
        print(f"{name:<9} {r['rejoined']:>8} {r['all_at']:>8.1f} {r['peak_rate']:>11.0f} {r['on_irc']:>7} "
              f"{r['storm_cpu']:>6.1f} {r['peak_rss'] / 1024:>7.1f}Mi {r['left_out']:>8} {r['resent']:>15}")
    for name, r in results.items():
        if "smaps" in r:
            print(f"\n{name}: smaps_rollup once all had joined\n{r['smaps']}")
        if "heap" in r:
            print(f"\n{name}: top allocation sites once all had joined (tracemalloc, one frame)\n{r['heap']}")


if __name__ == "__main__":
    main()
