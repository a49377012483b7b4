"""
Benchmark: the gateway's own cost per inbound SMS webhook and per inbound mail,
in one process, without an XMPP server, an HTTP client or an SMTP client.

The real stack on in-memory transports: the SMS component (Twilio provider) and
the email component, each on the real stream, bridge, outbox and SQLite registry
(synchronous=FULL, its group commit), as ``tests/unit/wire.py`` builds them; this
script plays the XMPP server (reads what the gateway writes, counts message
bodies, routes the delivery barrier's pings back as a server does), the HTTP
client and the SMTP client:

  --sms N    N inbound-SMS webhooks as Twilio sends them (its form fields in its
             order, a distinct MessageSid each, a valid X-Twilio-Signature), K in
             flight (``--inflight``) on K keep-alive HTTP/1.1 connections of the
             gateway's real web site (gateway.web.limits.LimitedSite: Twisted's
             request parsing, the body limits), one request at a time on each:
             the next goes when the 200 is in. Done when every 200 is in and
             every message was written to XMPP.
  --mails N  N SMTP sessions as postfix's smtp-source sends them (HELO, MAIL,
             RCPT, DATA with its four-line mail, QUIT; one mail per connection,
             each reply awaited), ``--sessions`` at once, through the real ESMTP
             listener (gateway.adapters.email.smtp_in). Done when every 250 and
             221 is in and every mail was written to XMPP.

CPU is this process's user+system time (every thread: the reactor and the
registry's SQLite thread) per message, and the reactor thread's own share; the requests and mails are built before
the clock starts. ``--calls`` counts function calls per message (Python and C,
as sys.setprofile sees them on the reactor thread): unlike CPU time the same on
a busy machine. ``inbound_throughput`` is the end-to-end figure against bare
baselines (it needs a quiet machine).

    .venv/bin/python -m tests.benchmarks.inbound_path [--sms 5000] [--mails 2000] [--inflight 20]
                     [--sessions 10] [--repeats 3] [--calls] [--db] [--profile FILE]

``--db`` adds the registry's SQLite thread per message: transactions (adbapi
interactions), the thread's CPU (``time.thread_time``, so its Python work and
SQLite's own, not its waits), the longest transaction's CPU, and the commit's
wall time (the fsync) per transaction: whether that thread holds the CPU, and so
the GIL, in long stretches the reactor would wait behind.

``--profile FILE`` writes cProfile statistics of one measured run of each path
to FILE.sms and FILE.mail (pstats) and prints the top of each.
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
import urllib.parse

from twisted.enterprise import adbapi
from twisted.internet import address, defer, error, reactor, task
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogBeginner
from twisted.python import failure
from twisted.web import resource

from gateway.adapters.email import EmailAdapter
from gateway.adapters.email.smtp_in import SMTPServerFactory
from gateway.adapters.sms import SMSAdapter
from gateway.adapters.sms.providers.twilio import signature
from gateway.options import validate_table
from gateway.service import freeze_startup_objects, tune_gc
from gateway.web.limits import BodyLimits, LimitedSite
from tests.benchmarks.core_path import Server, cpu, run_in_reactor
from tests.unit.wire import DOMAIN, Wire

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "bench-auth-token"
NUMBER = "+14155550100"
SENDER = "+12025550143"
PUBLIC_URL = "http://127.0.0.1:8080"
HOOK = f"/hooks/{DOMAIN}/twilio/inbound"
MAIL_DOMAIN = "mail.test"
USER = "bench@example.org"
PEER = address.IPv4Address("TCP", "127.0.0.1", 40000)


def webhook_request(i: int, run: str) -> bytes:
    """One inbound-SMS webhook as Twilio sends it (its parameters, in its order), head and body."""
    sid = f"SM{run}{i:026d}"[:34]
    params = [("ToCountry", "US"), ("ToState", "CA"), ("SmsMessageSid", sid), ("NumMedia", "0"),
              ("ToCity", "SAN FRANCISCO"), ("FromZip", "20001"), ("SmsSid", sid), ("FromState", "DC"),
              ("SmsStatus", "received"), ("FromCity", "WASHINGTON"), ("Body", f"bench {sid}"),
              ("FromCountry", "US"), ("To", NUMBER), ("ToZip", "94105"), ("NumSegments", "1"),
              ("MessageSid", sid), ("AccountSid", ACCOUNT_SID), ("From", SENDER), ("ApiVersion", "2010-04-01")]
    form: dict[str, list[str]] = {}
    for k, v in params:
        form.setdefault(k, []).append(v)
    body = urllib.parse.urlencode(params).encode()
    head = (f"POST {HOOK} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"X-Twilio-Signature: {signature(AUTH_TOKEN, PUBLIC_URL + HOOK, form)}\r\n"
            "I-Twilio-Idempotency-Token: " + f"{i:08x}-0000-4000-8000-000000000000\r\n"
            "User-Agent: TwilioProxy/1.1\r\nAccept: */*\r\nCache-Control: max-age=259200\r\n"
            "X-Forwarded-Proto: http\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def smtp_source_mail(i: int, run: str) -> bytes:
    """The DATA of one mail as smtp-source writes it (its headers, its four lines), without the final dot."""
    return (f"From: <bench@sender.test>\r\nTo: <bench@{MAIL_DOMAIN}>\r\n"
            "Date: Thu,  3 Dec 2026 08:20:53 +0000 (UTC)\r\n"
            f"Message-Id: <{run}{i:x}.0003.0000@vm.test>\r\n\r\n"
            "La de da de da 1.\r\nLa de da de da 2.\r\nLa de da de da 3.\r\nLa de da de da 4.\r\n").encode()


class _Wired(StringTransport):
    """A transport that tells its client whenever the gateway writes."""

    def __init__(self, on_write):
        super().__init__(peerAddress=PEER)
        self.on_write = on_write

    def write(self, data):
        super().write(data)
        self.on_write()

    def writeSequence(self, data):
        super().writeSequence(data)
        self.on_write()


def _http_done(data: bytes) -> bool:
    """Whether ``data`` holds one whole HTTP/1.1 response (Content-Length or chunked)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        return body.endswith(b"0\r\n\r\n")
    at = lower.find(b"content-length:")
    if at < 0:
        return False
    length = int(lower[at + 15:].split(b"\r\n", 1)[0])
    return len(body) >= length


class WebClients:
    """K keep-alive HTTP connections to the site, one request in flight on each."""

    def __init__(self, site, requests: list[bytes], k: int):
        self.site = site
        self.todo = iter(requests)
        self.pending = len(requests)
        self.latencies: list[float] = []
        self.failed: list[bytes] = []
        self.done = defer.Deferred()
        self.channels = []
        for _ in range(min(k, len(requests))):
            channel = site.buildProtocol(PEER)
            state = {"t0": 0.0, "scheduled": False}
            transport = _Wired(lambda c=channel, s=state: self._wrote(c, s))
            state["transport"] = transport
            channel.makeConnection(transport)
            self.channels.append((channel, transport, state))
        for channel, transport, state in self.channels:
            self._next(channel, state)

    def _next(self, channel, state) -> None:
        state["scheduled"] = False
        req = next(self.todo, None)
        if req is not None:
            state["t0"] = time.perf_counter()
            channel.dataReceived(req)

    def _wrote(self, channel, state) -> None:
        transport = state["transport"]
        data = transport.value()
        if state["scheduled"] or not _http_done(data):
            return
        transport.clear()
        self.latencies.append((time.perf_counter() - state["t0"]) * 1000)
        if not data.startswith(b"HTTP/1.1 200 "):
            self.failed.append(data[:200])
        self.pending -= 1
        if self.pending == 0:
            self.done.callback(None)
            return
        state["scheduled"] = True
        reactor.callLater(0, self._next, channel, state)     # as a client's next request: a later read

    def close(self) -> None:
        for channel, transport, _ in self.channels:
            channel.connectionLost(failure.Failure(error.ConnectionDone()))


class SMTPClients:
    """``sessions`` smtp-source sessions at once, one mail per connection, each reply awaited."""

    def __init__(self, factory, mails: list[bytes], sessions: int):
        self.factory = factory
        self.todo = iter(mails)
        self.pending = len(mails)
        self.failed: list[bytes] = []
        self.done = defer.Deferred()
        for _ in range(min(sessions, len(mails))):
            self._connect()

    def _connect(self) -> None:
        mail = next(self.todo, None)
        if mail is None:
            return
        proto = self.factory.buildProtocol(PEER)
        steps = iter([b"HELO vm.test\r\n", b"MAIL FROM:<bench@sender.test>\r\n",
                      f"RCPT TO:<bench@{MAIL_DOMAIN}>\r\n".encode(), b"DATA\r\n", mail + b".\r\n", b"QUIT\r\n"])
        expect = iter([b"220", b"250", b"250", b"250", b"354", b"250", b"221"])
        state = {"want": next(expect), "steps": steps, "expect": expect, "buffer": b""}
        transport = _Wired(lambda: self._wrote(proto, state))
        proto.makeConnection(transport)

    def _wrote(self, proto, state) -> None:
        transport = proto.transport
        state["buffer"] += transport.value()
        transport.clear()
        while b"\n" in state["buffer"]:
            line, state["buffer"] = state["buffer"].split(b"\n", 1)
            if line[3:4] == b"-":
                continue            # a multi-line reply goes on
            if not line.startswith(state["want"]):
                self.failed.append(line)
            want = next(state["expect"], None)
            if want is None:        # 221: the client closes, the next session starts
                reactor.callLater(0, self._closed, proto)
                return
            state["want"] = want
            reactor.callLater(0, proto.dataReceived, next(state["steps"]))

    def _closed(self, proto) -> None:
        proto.connectionLost(failure.Failure(error.ConnectionDone()))
        self.pending -= 1
        if self.pending == 0:
            self.done.callback(None)
        else:
            self._connect()


def sms_options() -> dict:
    problems: list = []
    options = validate_table({"provider": "twilio", "account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN,
                              "public_url": PUBLIC_URL, "api_url": "http://127.0.0.1:9", "default_region": "US"},
                             SMSAdapter.options, "", problems)
    assert not problems, problems
    return options


def email_options() -> dict:
    problems: list = []
    options = validate_table({"mail_domain": MAIL_DOMAIN, "smtp_listen": "", "sender_auth": "off",
                              "max_connections_per_ip": 1000, "max_messages_per_minute": 10 ** 9},
                             EmailAdapter.options, "", problems)
    assert not problems, problems
    return options


def build_site(wire: Wire) -> LimitedSite:
    """The gateway's site as gateway.web.site.build_site mounts a component's webhooks."""
    limits = BodyLimits()
    root = resource.Resource()
    hooks = resource.Resource()
    root.putChild(b"hooks", hooks)
    mount = resource.Resource()
    for name, res in wire.bridge.adapter.web_resources().items():
        mount.putChild(name.encode(), res)
        limits.set(f"/hooks/{DOMAIN}/{name}/".encode(), int(res.max_body))
    hooks.putChild(DOMAIN.encode(), mount)
    site = LimitedSite(root, limits)
    site.noisy = False
    site.displayTracebacks = False
    return site


@defer.inlineCallbacks
def register(wire: Wire, fields: dict[str, str]):
    values = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    reply = yield wire.iq("set", "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>"
                                 "<field var='FORM_TYPE'><value>jabber:iq:register</value></field>"
                                 f"{values}</x></query>", sender=USER + "/b", iq_id="reg")
    assert reply.getAttribute("type") == "result", reply.toXml()
    wire.sent()


@defer.inlineCallbacks
def drained(wire: Wire, server: Server, count: int):
    """Every message written to XMPP, and every row confirmed (the queue empty)."""
    deadline = time.monotonic() + 300
    while server.echoes < count and time.monotonic() < deadline:
        yield task.deferLater(reactor, 0.001, lambda: None)
    assert server.echoes == count, f"{server.echoes} messages on XMPP of {count}"
    while time.monotonic() < deadline:
        depth = yield wire.registry.queue_depth(DOMAIN)
        if not depth["out"] and not depth["in"]:
            return
        yield task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the queue did not drain")


class Bench:
    def __init__(self, args, work: str):
        self.args = args
        self.work = work
        self.runs = 0

    @defer.inlineCallbacks
    def start(self):
        big = {"rate": 1e9, "burst": 10 ** 9}
        self.sms = Wire(os.path.join(self.work, "sms.sqlite"), options=sms_options(), adapter=SMSAdapter, limits=big)
        yield self.sms.start()
        yield register(self.sms, {"number": NUMBER})
        self.site = build_site(self.sms)
        self.mail = Wire(os.path.join(self.work, "mail.sqlite"), options=email_options(), adapter=EmailAdapter,
                         limits=big)
        yield self.mail.start()
        yield register(self.mail, {"alias": "bench"})
        self.factory = SMTPServerFactory(self.mail.bridge.adapter, "", "")
        self.servers = {}
        self.polls = []
        for name, wire in (("sms", self.sms), ("mail", self.mail)):
            self.servers[name] = Server(wire)
            poll = task.LoopingCall(self.servers[name].pump)
            poll.start(0.0005)
            self.polls.append(poll)

    @defer.inlineCallbacks
    def run_sms(self, n: int, profiler=None) -> dict:
        self.runs += 1
        requests = [webhook_request(i, f"R{self.runs}x") for i in range(n)]
        server = self.servers["sms"]
        server.echoes = 0
        db0 = dict(DB, max_cpu=0.0)
        DB["max_cpu"] = 0.0
        t0, c0, r0 = time.perf_counter(), cpu(), time.thread_time()
        if profiler:
            profiler.enable()
        clients = WebClients(self.site, requests, self.args.inflight)
        yield clients.done
        yield drained(self.sms, server, n)
        if profiler:
            profiler.disable()
        elapsed, used, reactor_used = time.perf_counter() - t0, cpu() - c0, time.thread_time() - r0
        clients.close()
        assert not clients.failed, clients.failed[:3]
        lat = sorted(clients.latencies)
        return {"rate": n / elapsed, "cpu_us": used / n * 1e6, "reactor_us": reactor_used / n * 1e6, "p50": lat[len(lat) // 2],
                "p99": lat[max(0, int(len(lat) * 0.99) - 1)], **db_figures(db0, n)}

    @defer.inlineCallbacks
    def run_mail(self, n: int, profiler=None) -> dict:
        self.runs += 1
        mails = [smtp_source_mail(i, f"r{self.runs}x") for i in range(n)]
        server = self.servers["mail"]
        server.echoes = 0
        db0 = dict(DB, max_cpu=0.0)
        DB["max_cpu"] = 0.0
        t0, c0, r0 = time.perf_counter(), cpu(), time.thread_time()
        if profiler:
            profiler.enable()
        clients = SMTPClients(self.factory, mails, self.args.sessions)
        yield clients.done
        yield drained(self.mail, server, n)
        if profiler:
            profiler.disable()
        elapsed, used, reactor_used = time.perf_counter() - t0, cpu() - c0, time.thread_time() - r0
        assert not clients.failed, clients.failed[:3]
        return {"rate": n / elapsed, "cpu_us": used / n * 1e6, "reactor_us": reactor_used / n * 1e6,
                **db_figures(db0, n)}

    def stop(self):
        for poll in self.polls:
            poll.stop()
        self.sms.stop()
        self.mail.stop()


#: The SQLite thread's totals since watch_db(): transactions, thread CPU, longest
#: transaction's CPU, commit wall time (seconds).
DB = {"n": 0, "cpu": 0.0, "max_cpu": 0.0, "commit": 0.0}


def watch_db() -> None:
    """Time every adbapi interaction in its thread (``--db``): measurement only, the work is unchanged."""
    run = adbapi.ConnectionPool._runInteraction

    def timed(self, *args, **kw):
        c0 = time.thread_time()
        try:
            return run(self, *args, **kw)
        finally:
            used = time.thread_time() - c0
            DB["n"] += 1
            DB["cpu"] += used
            DB["max_cpu"] = max(DB["max_cpu"], used)

    def commit(self):
        w0 = time.perf_counter()
        try:
            return self._connection.commit()
        finally:
            DB["commit"] += time.perf_counter() - w0

    adbapi.ConnectionPool._runInteraction = timed
    adbapi.Connection.commit = commit


def db_figures(before: dict, n: int) -> dict:
    """The SQLite thread's figures for the ``n`` messages since ``before`` (a copy of DB)."""
    count = DB["n"] - before["n"]
    return {"db_per_msg": count / n, "db_cpu_us": (DB["cpu"] - before["cpu"]) / n * 1e6,
            "db_max_ms": DB["max_cpu"] * 1e3, "db_commit_ms": (DB["commit"] - before["commit"]) / max(1, count) * 1e3}


def count_calls(run, n: int):
    count = [0]

    def hook(frame, event, arg):
        if event == "call" or event == "c_call":
            count[0] += 1

    sys.setprofile(hook)
    d = run(n)

    def off(result):
        sys.setprofile(None)
        return count[0] / n

    return d.addBoth(off)


@defer.inlineCallbacks
def run(args) -> dict:
    work = tempfile.mkdtemp(prefix="gwinpath-", dir="/tmp")
    bench = Bench(args, work)
    results: dict = {"sms": [], "mail": [], "calls": {}}
    try:
        yield bench.start()
        # Warm-up: caches, code paths, the first transactions.
        if args.sms:
            yield bench.run_sms(50)
        if args.mails:
            yield bench.run_mail(50)
        # As `xmpp-gateway run` sets the process up (gateway/service.py).
        tune_gc()
        freeze_startup_objects()
        for _ in range(args.repeats):
            if args.sms:
                results["sms"].append((yield bench.run_sms(args.sms)))
            if args.mails:
                results["mail"].append((yield bench.run_mail(args.mails)))
        if args.calls:
            if args.sms:
                results["calls"]["sms"] = yield count_calls(bench.run_sms, args.sms)
            if args.mails:
                results["calls"]["mail"] = yield count_calls(bench.run_mail, args.mails)
        if args.profile:
            for name, go, n in (("sms", bench.run_sms, args.sms), ("mail", bench.run_mail, args.mails)):
                if n:
                    profiler = cProfile.Profile()
                    yield go(n, profiler)
                    profiler.dump_stats(f"{args.profile}.{name}")
        return results
    finally:
        bench.stop()
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
    parser.add_argument("--sms", type=int, default=5000, help="webhooks per run (0: none)")
    parser.add_argument("--mails", type=int, default=2000, help="SMTP sessions (one mail each) per run (0: none)")
    parser.add_argument("--inflight", type=int, default=20, help="webhooks in flight (connections)")
    parser.add_argument("--sessions", type=int, default=10, help="SMTP sessions at once")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", action="store_true",
                        help="also count function calls per message (one more run each, under sys.setprofile)")
    parser.add_argument("--db", action="store_true",
                        help="also the SQLite thread per message: transactions, CPU, longest transaction, commit time")
    parser.add_argument("--profile", metavar="FILE", help="cProfile one run of each path into FILE.sms, FILE.mail")
    args = parser.parse_args()
    # Log events are written out and forgotten, as in the gateway.
    globalLogBeginner.beginLoggingTo([lambda event: None], discardBuffer=True, redirectStandardIO=False)
    if args.db:
        watch_db()
    result = run_in_reactor(run, args)
    print(f"commit {describe()}, python {sys.version.split()[0]}, in process; "
          f"{args.sms} webhooks ({args.inflight} in flight), {args.mails} mails ({args.sessions} sessions), "
          f"x {args.repeats}")
    for name, label, n in (("sms", "webhook → XMPP", args.sms), ("mail", "SMTP → XMPP", args.mails)):
        runs = result[name]
        if not runs:
            continue
        cpus = sorted(r["cpu_us"] for r in runs)
        rates = sorted(r["rate"] for r in runs)
        react = sorted(r["reactor_us"] for r in runs)
        line = (f"{label:<15} CPU µs/msg best {cpus[0]:.0f} (range {cpus[0]:.0f}–{cpus[-1]:.0f}), "
                f"of it the reactor thread {react[0]:.0f} ({react[0]:.0f}–{react[-1]:.0f}); "
                f"msgs/s best {rates[-1]:.0f}")
        if name == "sms":
            line += f"; p50/p99 ms of the best run {min(runs, key=lambda r: r['cpu_us'])['p50']:.2f}/" \
                    f"{min(runs, key=lambda r: r['cpu_us'])['p99']:.2f}"
        if name in result["calls"]:
            line += f"; calls/msg {result['calls'][name]:.0f}"
        if args.db:
            best = min(runs, key=lambda r: r["cpu_us"])
            line += (f"; SQLite thread (best run): {best['db_per_msg']:.3f} transactions/msg, "
                     f"CPU {best['db_cpu_us']:.0f} µs/msg, longest transaction's CPU {best['db_max_ms']:.2f} ms, "
                     f"commit {best['db_commit_ms']:.2f} ms/transaction")
        print(line)
    if args.profile:
        for name in ("sms", "mail"):
            if os.path.exists(f"{args.profile}.{name}"):
                print(f"\n== {name} ==")
                pstats.Stats(f"{args.profile}.{name}").sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
