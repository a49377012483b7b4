"""
Benchmark: inbound traffic from the foreign side to an XMPP user, through the
gateway, against bare baselines measured in the same run.

  SMS webhook → XMPP  N correctly signed Twilio inbound webhooks (form body as
                      Twilio sends it, a distinct MessageSid each), K in flight on
                      K keep-alive HTTP/1.1 connections; the clock stops when the
                      last one has arrived on XMPP. Lost and duplicated are counted
                      by the MessageSid carried in each body.
  baseline (web)      a bare twisted.web resource answering 200 (baseline_web.py),
                      same client, same K: the clock stops at the last 200.
  SMTP → XMPP         postfix's smtp-source sends M mails over 10 sessions to the
                      gateway's SMTP listener for the registered address; the clock
                      stops when the last has arrived on XMPP. smtp-source's mails
                      differ only in their Message-Id (so the gateway's repeat check
                      keeps them apart): arrivals are counted, and smtp-source's
                      exit status says every mail got its 250.
  baselines (SMTP)    an aiosmtpd counting sink (baseline_smtp.py) and postfix's
                      smtp-sink, same smtp-source command.

One Prosody on loopback; the gateway is the real `xmpp-gateway run` process with
the SMS (Twilio provider) and email components and an SQLite registry. CPU is the
gateway's user+system time from /proc divided by messages.

    .venv/bin/python -m tests.benchmarks.inbound_throughput [--sms 5000] [--inflight 20] [--mails 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from gateway.adapters.sms.providers.twilio import signature
from gateway.testing.process import free_port, port_open, wait_for
from gateway.testing.prosody import Prosody
from tests.benchmarks.echo_throughput import RawClient, bench_config, cpu_seconds

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "bench-auth-token"
NUMBER = "+14155550100"
SENDER = "+12025550143"
MAIL_DOMAIN = "mail.test"
SMS_DOMAIN, MAIL_COMPONENT = "sms.localhost", "mail.localhost"


class Counter(RawClient):
    """The XMPP user, reading in the background: counts bodies by the component they come from."""

    def start_reading(self):
        self.sms: list[str] = []
        self.mails = 0
        self.mail_ids: set[str] = set()
        self._task = asyncio.ensure_future(self._pump())

    async def _pump(self):
        msg = re.compile(r"<message\b([^>]*)>(.*?)</message>", re.S)
        while True:
            data = await self.reader.read(262144)
            if not data:
                return
            self.buffer += data.decode()
            last = 0
            for m in msg.finditer(self.buffer):
                last = m.end()
                attrs, inner = m.group(1), m.group(2)
                if "<body>" not in inner:
                    continue
                if MAIL_COMPONENT in attrs:
                    self.mails += 1
                    sid = re.search(r"<stanza-id[^>]*id=['\"]([^'\"]+)|<origin-id[^>]*id=['\"]([^'\"]+)", inner)
                    if sid:
                        self.mail_ids.add(sid.group(1) or sid.group(2))
                elif SMS_DOMAIN in attrs:
                    b = re.search(r"<body>(.*?)</body>", inner, re.S)
                    self.sms.append(b.group(1))
            if last:
                self.buffer = self.buffer[last:]

    async def wait(self, cond, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True


def webhook_body(i: int, run: str) -> tuple[bytes, dict[str, list[str]]]:
    """An inbound-SMS webhook as Twilio sends it (its parameters, in its order)."""
    sid = f"SM{run}{i:026d}"[:34]
    params = [("ToCountry", "US"), ("ToState", "CA"), ("SmsMessageSid", sid), ("NumMedia", "0"),
              ("ToCity", "SAN FRANCISCO"), ("FromZip", "20001"), ("SmsSid", sid), ("FromState", "DC"),
              ("SmsStatus", "received"), ("FromCity", "WASHINGTON"), ("Body", f"bench {sid}"),
              ("FromCountry", "US"), ("To", NUMBER), ("ToZip", "94105"), ("NumSegments", "1"),
              ("MessageSid", sid), ("AccountSid", ACCOUNT_SID), ("From", SENDER), ("ApiVersion", "2010-04-01")]
    form: dict[str, list[str]] = {}
    for k, v in params:
        form.setdefault(k, []).append(v)
    return urllib.parse.urlencode(params).encode(), form


async def post_all(port: int, path: str, public_url: str, n: int, k: int, run: str) -> list[float]:
    """N signed webhooks over K keep-alive connections, one request in flight on each; latencies in ms."""
    url = public_url + path
    requests = []
    for i in range(n):
        body, form = webhook_body(i, run)
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"X-Twilio-Signature: {signature(AUTH_TOKEN, url, form)}\r\n"
                "User-Agent: TwilioProxy/1.1\r\nAccept: */*\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        requests.append(head + body)
    latencies: list[float] = []
    todo = iter(requests)

    async def worker():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for req in todo:
            t0 = time.perf_counter()
            writer.write(req)
            status = await reader.readline()
            if b" 200 " not in status:
                raise RuntimeError(f"webhook answered {status!r}")
            length, chunked = None, False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readline()).strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            elif length:
                await reader.readexactly(length)
            latencies.append((time.perf_counter() - t0) * 1000)
        writer.close()

    await asyncio.gather(*(worker() for _ in range(k)))
    return latencies


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[max(0, int(len(values) * q) - 1)]


def smtp_source(port: int, mails: int, sessions: int) -> float:
    """Postfix's smtp-source, M mails over ``sessions`` parallel sessions; seconds it took (it exits at the last 250)."""
    t0 = time.perf_counter()
    subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(mails), "-f", "bench@sender.test",
                    "-t", f"bench@{MAIL_DOMAIN}", "-M", "vm.test", f"127.0.0.1:{port}"], check=True,
                   capture_output=True, timeout=300)
    return time.perf_counter() - t0


def gateway_config(work: str, component_port: int, web_port: int, smtp_port: int) -> str:
    return bench_config(work, component_port, f"""[[components]]
domain = "{SMS_DOMAIN}"
secret = "sms-secret"
adapter = "sms"
[components.options]
provider = "twilio"
account_sid = "{ACCOUNT_SID}"
auth_token = "{AUTH_TOKEN}"
public_url = "http://127.0.0.1:{web_port}"
api_url = "http://127.0.0.1:9"
default_region = "US"
[[components]]
domain = "{MAIL_COMPONENT}"
secret = "mail-secret"
adapter = "email"
[components.options]
mail_domain = "{MAIL_DOMAIN}"
smtp_listen = "tcp:{smtp_port}:interface=127.0.0.1"
sender_auth = "off"
max_connections_per_ip = 100
max_messages_per_minute = 1000000
""", log_level="warn", web_listen=f"tcp:{web_port}:interface=127.0.0.1")


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def register_form(fields: dict[str, str]) -> str:
    values = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    return ("<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>"
            f"<field var='FORM_TYPE'><value>jabber:iq:register</value></field>{values}</x></query>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sms", type=int, default=5000, help="webhooks sent")
    parser.add_argument("--inflight", type=int, default=20, help="webhooks in flight (connections)")
    parser.add_argument("--mails", type=int, default=2000, help="mails sent by smtp-source")
    parser.add_argument("--sessions", type=int, default=10, help="smtp-source's parallel sessions")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds to wait before each gateway phase (to attach a profiler)")
    args = parser.parse_args()
    for tool in ("smtp-source", "smtp-sink"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install postfix (no configuration; it is not started)")

    work = tempfile.mkdtemp(prefix="gwinbound-", dir="/tmp")
    os.chmod(work, 0o755)
    prosody = Prosody(os.path.join(work, "prosody"), {SMS_DOMAIN: "sms-secret", MAIL_COMPONENT: "mail-secret"}).start()
    procs: list[subprocess.Popen] = []
    web_port, smtp_port, base_web, base_smtp, sink_port = (free_port() for _ in range(5))
    results: dict[str, dict] = {}

    def spawn(name, argv, **kw):
        log = open(os.path.join(work, f"{name}.log"), "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        procs.append(p)
        return p

    try:
        prosody.register("bench", "benchpw")
        gateway = spawn("gateway", [sys.executable, "-m", "gateway.cli", "run",
                                    gateway_config(work, prosody.component_port, web_port, smtp_port)])
        spawn("baseline_web", [sys.executable, "-m", "tests.benchmarks.baseline_web", str(base_web)])
        aiosink = spawn("baseline_smtp", [sys.executable, "-m", "tests.benchmarks.baseline_smtp", str(base_smtp)])
        spawn("smtp_sink", ["smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "1024"])
        for port in (web_port, smtp_port, base_web, base_smtp, sink_port):
            wait_for(lambda: port_open(port), 30, f"port {port}")
        wait_for(lambda: healthy(web_port), 30, "gateway's components authenticated (/healthz)")

        async def run_all():
            client = await Counter("bench@localhost", "benchpw", prosody.c2s_port).connect()
            for domain, fields, iq_id in ((SMS_DOMAIN, {"number": NUMBER}, "r1"),
                                          (MAIL_COMPONENT, {"alias": "bench"}, "r2")):
                reply = await client.iq(domain, register_form(fields), iq_id)
                assert "type='result'" in reply or 'type="result"' in reply, reply
            await asyncio.sleep(1.0)
            client.buffer = ""
            client.start_reading()
            hook = f"/hooks/{SMS_DOMAIN}/twilio/inbound"
            public = f"http://127.0.0.1:{web_port}"
            # warm-up: registration caches, connections, code paths
            await post_all(web_port, hook, public, 20, 4, "W")
            await client.wait(lambda: len(client.sms) >= 20, 30)
            await post_all(base_web, hook, public, 200, 4, "W")

            t0 = time.perf_counter()
            lat = await post_all(base_web, hook, public, args.sms, args.inflight, "B")
            el = time.perf_counter() - t0
            results["webhook baseline"] = {"rate": args.sms / el, "p50": statistics.median(lat),
                                           "p99": pct(lat, 0.99), "cpu": None, "lost": "", "dup": ""}

            print(f"phase webhook gateway pid {gateway.pid}", flush=True)
            await asyncio.sleep(args.pause)
            client.sms.clear()
            cpu0 = cpu_seconds(gateway.pid)
            t0 = time.perf_counter()
            lat = await post_all(web_port, hook, public, args.sms, args.inflight, "G")
            complete = await client.wait(lambda: len(client.sms) >= args.sms, 60)
            el = time.perf_counter() - t0
            print("phase webhook done", flush=True)
            await asyncio.sleep(0.5)            # late duplicates
            cpu = cpu_seconds(gateway.pid) - cpu0
            want = {f"bench {webhook_body(i, 'G')[1]['MessageSid'][0]}" for i in range(args.sms)}
            got = client.sms
            results["webhook → XMPP"] = {"rate": args.sms / el, "p50": statistics.median(lat), "p99": pct(lat, 0.99),
                                         "cpu": cpu / args.sms * 1e6, "lost": len(want - set(got)),
                                         "dup": len(got) - len(set(got)), "complete": complete}

            for name, port in (("aiosmtpd sink", base_smtp), ("postfix smtp-sink", sink_port)):
                el = await asyncio.to_thread(smtp_source, port, args.mails, args.sessions)
                results[name] = {"rate": args.mails / el, "p50": None, "p99": None, "cpu": None,
                                 "lost": "", "dup": ""}
            await asyncio.to_thread(smtp_source, smtp_port, 20, 2)          # warm-up
            await client.wait(lambda: client.mails >= 20, 30)
            print(f"phase smtp gateway pid {gateway.pid}", flush=True)
            await asyncio.sleep(args.pause)
            client.mails, client.mail_ids = 0, set()
            cpu0 = cpu_seconds(gateway.pid)
            t0 = time.perf_counter()
            await asyncio.to_thread(smtp_source, smtp_port, args.mails, args.sessions)
            complete = await client.wait(lambda: client.mails >= args.mails, 120)
            el = time.perf_counter() - t0
            await asyncio.sleep(0.5)
            cpu = cpu_seconds(gateway.pid) - cpu0
            results["SMTP → XMPP"] = {"rate": args.mails / el, "p50": None, "p99": None,
                                      "cpu": cpu / args.mails * 1e6, "lost": max(0, args.mails - client.mails),
                                      "dup": max(0, client.mails - args.mails), "complete": complete,
                                      "distinct": len(client.mail_ids)}

        asyncio.run(run_all())
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        prosody.stop()
    counted = re.search(r"received (\d+)", open(os.path.join(work, "baseline_smtp.log")).read())

    fmt = lambda v, f: "" if v is None or v == "" else format(v, f)  # noqa: E731
    print(f"\ninbound through Prosody 0.12: {args.sms} Twilio webhooks, {args.inflight} in flight; "
          f"{args.mails} mails by smtp-source over {args.sessions} sessions\n")
    print(f"{'path':<18} {'msgs/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'gateway CPU µs/msg':>19} {'lost':>5} {'dup':>4}")
    for name, r in results.items():
        print(f"{name:<18} {r['rate']:>8.0f} {fmt(r['p50'], '.2f'):>7} {fmt(r['p99'], '.2f'):>7} "
              f"{fmt(r['cpu'], '.0f'):>19} {r['lost']!s:>5} {r['dup']!s:>4}")
    w, wb = results["webhook → XMPP"], results["webhook baseline"]
    s, sb = results["SMTP → XMPP"], results["aiosmtpd sink"]
    print(f"\nwebhook → XMPP: {w['rate'] / wb['rate']:.0%} of the bare twisted.web resource (goal 70 %), "
          f"p99 {w['p99'] / wb['p99']:.1f}× the baseline's (goal ≤ 2×)")
    print(f"SMTP → XMPP: {s['rate'] / sb['rate']:.0%} of the aiosmtpd sink (goal 80 %), "
          f"{s['rate'] / results['postfix smtp-sink']['rate']:.0%} of postfix's smtp-sink; "
          f"{s['distinct']} distinct stanza ids among {args.mails + 0 - s['lost']} arrivals; "
          f"aiosmtpd sink counted {counted.group(1) if counted else '?'} of {args.mails}")
    if not (w["complete"] and s["complete"]):
        print("INCOMPLETE: not everything arrived within the time limit")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
