"""
Benchmark: message round trips user → Prosody → component → Prosody → user.

Compares, in one run against one Prosody:
  baseline  the smallest wokkel echo component (nothing stored, nothing checked)
  gateway   xmpp-gateway with the echo adapter: access checks, rate limit, durable
            outbox and inbox in SQLite (WAL), per-conversation ordering, metrics

A raw asyncio XMPP client (SASL PLAIN, bind, raw writes) keeps client overhead out of
the figures. Throughput: N messages sent at once, clock stopped at the last echo.
Latency: M messages one after another, each waiting for its echo.

    .venv/bin/python -m tests.benchmarks.echo_throughput [--messages 5000] [--latency 300]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from gateway.registry.crypto import SecretBox
from gateway.testing.process import wait_for
from gateway.testing.prosody import Prosody


class RawClient:
    def __init__(self, jid: str, password: str, port: int):
        self.user, self.host = jid.split("@")
        self.password = password
        self.port = port
        self.buffer = ""

    async def _read_until(self, pattern: str, timeout: float = 10) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.buffer, re.S)
            if m:
                self.buffer = self.buffer[m.end():]
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(pattern)
            data = await asyncio.wait_for(self.reader.read(65536), left)
            if not data:
                raise ConnectionError("closed")
            self.buffer += data.decode()

    def send(self, text: str) -> None:
        self.writer.write(text.encode())

    def _header(self) -> None:
        self.send(f"<?xml version='1.0'?><stream:stream to='{self.host}' xmlns='jabber:client' "
                  "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")

    async def connect(self) -> "RawClient":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._header()
        await self._read_until(r"</stream:features>")
        token = base64.b64encode(f"\0{self.user}\0{self.password}".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        await self._read_until(r"<success[^>]*/>|<success.*?</success>")
        self.buffer = ""
        self._header()
        await self._read_until(r"</stream:features>")
        self.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bench"
                  "</resource></bind></iq>")
        await self._read_until(r"<jid>(.*?)</jid>")
        self.send("<presence/>")
        return self

    async def iq(self, to: str, payload: str, iq_id: str) -> str:
        self.send(f"<iq type='set' id='{iq_id}' to='{to}'>{payload}</iq>")
        m = await self._read_until(rf"<iq[^>]*id=['\"]{iq_id}['\"][^>]*(?:/>|>.*?</iq>)")
        return m.group(0)

    def message(self, to: str, body: str) -> None:
        self.send(f"<message to='{to}' type='chat'><body>{body}</body></message>")

    async def bodies(self, count: int, timeout: float) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            for m in re.finditer(r"<body>(.*?)</body>", self.buffer):
                got.append(m.group(1))
            cut = self.buffer.rfind("</body>")
            if cut >= 0:
                self.buffer = self.buffer[cut + 7:]
            if len(got) >= count:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(got)} of {count} echoes")
            data = await asyncio.wait_for(self.reader.read(262144), left)
            self.buffer += data.decode()
        return got


def bench_config(work: str, component_port: int, components: str, log_level: str = "info",
                 web_listen: str = "") -> str:
    """A gateway config for a benchmark: no limits, no web site unless asked, files and registry in ``work``."""
    config = os.path.join(work, "gateway.toml")
    with open(config, "w") as f:
        f.write(f"""[gateway]
allowed_domains = ["localhost"]
[xmpp]
port = {component_port}
[registry]
url = "sqlite:///{work}/registry.sqlite"
secret_key = "{SecretBox.generate()}"
[limits]
rate = 1000000.0
burst = 1000000
[web]
listen = "{web_listen}"
[files]
directory = "{work}/files"
[log]
level = "{log_level}"
{components}""")
    return config


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(client: RawClient, domain: str, n: int, m: int, contacts: int) -> dict:
    to = f"echo@{domain}"
    for i in range(20):  # warm-up
        client.message(to, f"w{i}")
    await client.bodies(20, 30)
    start = time.perf_counter()
    for i in range(n):
        client.message(f"c{i % contacts}@{domain}", f"t{i}")
    await client.writer.drain()
    got = await client.bodies(n, 300)
    elapsed = time.perf_counter() - start
    assert sorted(got) == sorted(f"t{i}" for i in range(n)), "lost or duplicated echoes"
    latencies = []
    for i in range(m):
        t0 = time.perf_counter()
        client.message(to, f"l{i}")
        await client.bodies(1, 30)
        latencies.append((time.perf_counter() - t0) * 1000)
    latencies.sort()
    return {"rate": n / elapsed, "elapsed": elapsed, "p50": statistics.median(latencies),
            "p99": latencies[int(len(latencies) * 0.99) - 1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--latency", type=int, default=300)
    parser.add_argument("--contacts", type=int, default=20, help="conversations the load is spread over")
    parser.add_argument("--profile", metavar="FILE",
                        help="record the gateway with py-spy during the throughput phase (collapsed stacks)")
    parser.add_argument("--only-gateway", action="store_true", help="skip the baseline (for profiling)")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="gwbench-", dir="/tmp")
    os.chmod(work, 0o755)
    comps = {"baseline.localhost": "baseline-secret", "gateway.localhost": "gateway-secret"}
    prosody = Prosody(os.path.join(work, "prosody"), comps).start()
    procs = []
    try:
        prosody.register("bench", "benchpw")
        base_log = open(os.path.join(work, "baseline.log"), "w")
        baseline = subprocess.Popen([sys.executable, "-m", "tests.benchmarks.baseline_echo", "baseline.localhost",
                                     str(prosody.component_port), "baseline-secret"], stdout=base_log,
                                    stderr=subprocess.STDOUT)
        procs.append(baseline)
        config = bench_config(work, prosody.component_port, """[[components]]
domain = "gateway.localhost"
secret = "gateway-secret"
adapter = "echo"
""", log_level="warn")
        gw_log = open(os.path.join(work, "gateway.log"), "w")
        gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", config], stdout=gw_log,
                                   stderr=subprocess.STDOUT)
        procs.append(gateway)
        wait_for(lambda: "authenticated" in open(os.path.join(work, "baseline.log")).read(), 20, "baseline")
        time.sleep(1.0)

        async def run_all():
            client = await RawClient("bench@localhost", "benchpw", prosody.c2s_port).connect()
            # The gateway logs at "warn" (no "authenticated" line to wait for): asked until it is connected.
            deadline = time.monotonic() + 30
            while True:
                reply = await client.iq("gateway.localhost", "<query xmlns='jabber:iq:register'>"
                                                             "<username>bench</username></query>", "reg")
                if "not-connected" not in reply or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert "type='result'" in reply or 'type="result"' in reply, reply
            results = {}
            runs = [("baseline", "baseline.localhost", baseline.pid), ("gateway", "gateway.localhost", gateway.pid)]
            for name, domain, pid in runs[args.only_gateway:]:
                cpu0, pcpu0 = cpu_seconds(pid), cpu_seconds(prosody.server.proc.pid)
                spy = None
                if args.profile and name == "gateway":
                    spy_bin = os.path.join(os.path.dirname(sys.executable), "py-spy")
                    spy = subprocess.Popen([spy_bin, "record", "--gil", "-r", "250", "-f", "raw", "-o", args.profile,
                                            "--pid", str(pid)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    await asyncio.sleep(1.0)
                r = await measure(client, domain, args.messages, args.latency, args.contacts)
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(30)
                r["cpu_us"] = (cpu_seconds(pid) - cpu0) / (args.messages + args.latency + 20) * 1e6
                r["prosody_cpu_us"] = (cpu_seconds(prosody.server.proc.pid) - pcpu0) / (
                    args.messages + args.latency + 20) * 1e6
                results[name] = r
            return results

        results = asyncio.run(run_all())
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        prosody.stop()
    print(f"\necho round trips through Prosody 0.12: {args.messages} messages at once over {args.contacts} "
          f"contacts, then {args.latency} one by one\n")
    print(f"{'component':<10} {'msgs/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'component CPU µs/msg':>21} "
          f"{'Prosody CPU µs/msg':>19}")
    for name, r in results.items():
        print(f"{name:<10} {r['rate']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['cpu_us']:>21.0f} "
              f"{r['prosody_cpu_us']:>19.0f}")
    if "baseline" in results:
        ratio = results["gateway"]["rate"] / results["baseline"]["rate"]
        print(f"\ngateway throughput = {ratio:.0%} of the baseline")


if __name__ == "__main__":
    main()
