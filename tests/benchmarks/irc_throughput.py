"""
Benchmark: IRC ↔ XMPP through xmpp-gateway and through biboumi, side by side, against
the same Prosody and the same ngircd in one run.

  IRC → XMPP   an IRC client floods a channel with N lines; clock stops when the XMPP
               user (joined through the gateway) has received all N
  XMPP → IRC   the XMPP user sends N groupchat messages; clock stops when the IRC client
               has seen all N
  latency      M lines IRC → XMPP one at a time (median and p99)

Fair settings for both: ngircd MaxPenaltyTime 0; no outgoing throttle (biboumi
throttle_limit -1, ours throttle_rate 0); biboumi's history recording off (otherwise it
waits on SQLite fsync per line).

    .venv/bin/python -m tests.benchmarks.irc_throughput [--lines 5000] [--latency 200]
                     [--archive on|off|compare] [--no-biboumi]

``--archive compare`` runs our gateway twice in turn, the room archive off and
then on (``[retention] room_archive``), each with its own registry, and prints
the throughput the archive costs (issue 13 allows 10 %).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

from gateway.testing.ngircd import Ngircd
from gateway.testing.process import Server
from gateway.testing.prosody import Prosody
from tests.benchmarks.echo_throughput import RawClient, bench_config, cpu_seconds
from tests.benchmarks.irc_scale import start_biboumi
from tests.integration.irc_support import RawIRC


class XMPPUser(RawClient):
    """The raw client, reading in the background: every groupchat body goes to a queue."""

    def start_reading(self):
        self.bodies_q: asyncio.Queue = asyncio.Queue()
        self._reader_task = asyncio.ensure_future(self._pump())

    async def _pump(self):
        pattern = re.compile(r"<body>(.*?)</body>", re.S)
        while True:
            data = await self.reader.read(262144)
            if not data:
                return
            self.buffer += data.decode()
            last = 0
            for m in pattern.finditer(self.buffer):
                self.bodies_q.put_nowait(m.group(1))
                last = m.end()
            self.buffer = self.buffer[last:] if last else self.buffer[-65536:]

    async def command(self, to: str, node: str, fields: dict[str, list[str]], iq_id: str) -> str:
        first = await self.iq(to, f"<command xmlns='http://jabber.org/protocol/commands' node='{node}' "
                                  "action='execute'/>", iq_id + "a")
        session = re.search(r"sessionid=['\"]([^'\"]+)", first).group(1)
        values = "".join(f"<field var='{k}'>" + "".join(f"<value>{v}</value>" for v in vs) + "</field>"
                         for k, vs in fields.items())
        return await self.iq(to, f"<command xmlns='http://jabber.org/protocol/commands' node='{node}' "
                                 f"sessionid='{session}' action='complete'><x xmlns='jabber:x:data' type='submit'>"
                                 f"{values}</x></command>", iq_id + "b")

    async def join(self, room_jid: str, nick: str):
        self.send(f"<presence to='{room_jid}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        await self._read_until(rf"<presence[^>]*from=['\"]{re.escape(room_jid)}/{re.escape(nick)}['\"].*?"
                               r"code=['\"]110['\"]", timeout=20)


async def measure(name: str, user: XMPPUser, room_jid: str, channel: str, nick: str, flooder: RawIRC,
                  lines: int, latency: int, pid: int) -> dict:
    await user.join(room_jid, nick)
    await flooder.expect(lambda l: l.startswith(f":{nick}!") and " JOIN " in l, timeout=20)
    user.start_reading()
    await asyncio.sleep(1.0)
    while not user.bodies_q.empty():
        user.bodies_q.get_nowait()
    result = {}
    cpu0 = cpu_seconds(pid)

    start = time.perf_counter()
    for i in range(lines):
        flooder.writer.write(f"PRIVMSG {channel} :i{i}\r\n".encode())
    await flooder.writer.drain()
    got = 0
    while got < lines:
        text = await asyncio.wait_for(user.bodies_q.get(), 120)
        if text.startswith("i"):
            got += 1
    result["irc_to_xmpp"] = lines / (time.perf_counter() - start)

    start = time.perf_counter()
    for i in range(lines):
        user.send(f"<message to='{room_jid}' type='groupchat'><body>x{i}</body></message>")
    await user.writer.drain()
    seen = 0
    while seen < lines:
        await flooder.expect(lambda l: l.startswith(f":{nick}!") and " PRIVMSG " in l, timeout=120)
        seen += 1
    result["xmpp_to_irc"] = lines / (time.perf_counter() - start)

    await asyncio.sleep(1.0)
    while not user.bodies_q.empty():
        user.bodies_q.get_nowait()
    waits = []
    for i in range(latency):
        t0 = time.perf_counter()
        flooder.send(f"PRIVMSG {channel} :p{i}")
        while (await asyncio.wait_for(user.bodies_q.get(), 30)) != f"p{i}":
            pass
        waits.append((time.perf_counter() - t0) * 1000)
    waits.sort()
    result["p50"] = statistics.median(waits)
    result["p99"] = waits[max(0, int(len(waits) * 0.99) - 1)]
    result["cpu_us"] = (cpu_seconds(pid) - cpu0) / (2 * lines + latency) * 1e6
    return result


def start_ours(work: str, name: str, component_port: int, ircd_port: int, archive: bool) -> Server:
    """Our gateway for component ``irc-<name>.localhost``, with the room archive on or off, in its own directory."""
    path = os.path.join(work, name)
    os.makedirs(path)
    config = bench_config(path, component_port, f"""[retention]
room_archive = {"true" if archive else "false"}
[[components]]
domain = "irc-{name}.localhost"
secret = "{name}-secret"
adapter = "irc"
[components.options]
throttle_rate = 0.0
servers = {{ "localhost" = {{ host = "127.0.0.1", port = {ircd_port}, tls = false }} }}
""")
    gateway = Server(name, [sys.executable, "-m", "gateway.cli", "run", config],
                     os.path.join(path, "gateway.log")).start()
    gateway.wait_log(": authenticated", timeout=20)
    return gateway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--latency", type=int, default=200)
    parser.add_argument("--archive", choices=("on", "off", "compare"), default="on",
                        help="our gateway with the room archive ([retention] room_archive) on, off, or both in turn "
                             "(compare: the cost of archiving, in %%)")
    parser.add_argument("--no-biboumi", action="store_true", help="measure only xmpp-gateway")
    args = parser.parse_args()
    if not args.no_biboumi and not shutil.which("biboumi"):
        sys.exit("biboumi is not installed: apt-get install biboumi (or pass --no-biboumi)")
    runs = {"on": [True], "off": [False], "compare": [False, True]}[args.archive]

    work = tempfile.mkdtemp(prefix="gwircbench-", dir="/tmp")
    os.chmod(work, 0o755)
    comps = {"irc-gw.localhost": "gw-secret", "irc-gwoff.localhost": "gwoff-secret", "irc-bb.localhost": "bb-secret"}
    prosody = Prosody(os.path.join(work, "prosody"), comps).start()
    ircd = Ngircd(os.path.join(work, "ngircd")).start()
    procs = []
    results = {}
    try:
        prosody.register("bench", "benchpw")

        async def ours(archive: bool):
            name = "gw" if archive else "gwoff"
            label = f"ours, archive {'on' if archive else 'off'}"
            gateway = start_ours(work, name, prosody.component_port, ircd.port, archive)
            procs.append(gateway)
            try:
                flooder = await RawIRC(ircd.port, f"flood{name}").connect()
                channel = f"#bench-{name}"
                flooder.send(f"JOIN {channel}")
                user = await XMPPUser("bench@localhost", "benchpw", prosody.c2s_port).connect()
                results[label] = await measure(label, user, f"{channel}%localhost@irc-{name}.localhost", channel,
                                               f"bench{name}", flooder, args.lines, args.latency, gateway.proc.pid)
                await flooder.close()
            finally:
                gateway.stop()
                procs.remove(gateway)

        async def theirs():
            biboumi = start_biboumi(work, prosody.component_port)
            procs.append(biboumi)
            flooder = await RawIRC(ircd.port, "flooder").connect()
            flooder.send("JOIN #bench-bb")
            bb_user = await XMPPUser("bench@localhost", "benchpw", prosody.c2s_port).connect()
            await bb_user.command("127.0.0.1@irc-bb.localhost", "configure",
                                  {"ports": [str(ircd.port)], "tls_ports": [], "throttle_limit": ["-1"]}, "c1")
            await bb_user.command("irc-bb.localhost", "configure",
                                  {"record_history": ["false"], "max_history_length": ["0"],
                                   "persistent": ["false"]}, "c2")
            results["biboumi"] = await measure("biboumi", bb_user, "#bench-bb%127.0.0.1@irc-bb.localhost",
                                               "#bench-bb", "benchbb", flooder, args.lines, args.latency,
                                               biboumi.proc.pid)

        async def run_all():
            for archive in runs:
                await ours(archive)
            if not args.no_biboumi:
                await theirs()

        asyncio.run(run_all())
    finally:
        for p in procs:
            p.stop()
        ircd.stop()
        prosody.stop()
    print(f"\nIRC <-> XMPP through Prosody 0.12 and ngircd: {args.lines} lines each way, "
          f"{args.latency} one at a time\n")
    print(f"{'gateway':<22} {'IRC→XMPP /s':>12} {'XMPP→IRC /s':>12} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/line':>12}")
    for name, r in results.items():
        print(f"{name:<22} {r['irc_to_xmpp']:>12.0f} {r['xmpp_to_irc']:>12.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} "
              f"{r['cpu_us']:>12.0f}")
    off, on = results.get("ours, archive off"), results.get("ours, archive on")
    if off and on:
        print("\nroom archive cost (on vs off): "
              + ", ".join(f"{key} {100 * (1 - on[key] / off[key]):+.1f} %" for key in ("irc_to_xmpp", "xmpp_to_irc"))
              + " throughput lost (the budget is 10 %)")


if __name__ == "__main__":
    main()
