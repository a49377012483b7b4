"""
Faults injected into the gateway process, the XMPP server and the link
between them, under steady two-way traffic through the echo network (each
message comes back from its contact after a delay). Every case ends with the
ledger: nothing accepted lost, nothing duplicated.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
import uuid

from tests.faults.conftest import COMPONENTS, LONG, start_gateway
from tests.faults.ledger import Ledger, drain, pump, server_knows_it_is_gone, steady, summary
from tests.integration.gateway_fixture import registered_client
from tests.integration.harness import Client, http_get, run, run_then_stop


def assert_clean(ledger: Ledger, what: str) -> None:
    report = ledger.report()
    print(f"ledger ({what}): {summary(ledger)}")
    assert report["lost"] == 0 and report["duplicates"] == 0, summary(ledger)
    assert report["delivered"] > 0


def cli(gateway, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args, "--config", gateway.config_path],
                          capture_output=True, text=True, timeout=30)


def messages_received(gateway) -> float:
    """Message stanzas the gateway has read from its stream (its own /metrics)."""
    _, text = http_get(f"http://127.0.0.1:{gateway.web_port}/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("xmpp_gateway_stanzas_total{") and 'direction="in"' in line
               and 'type="message"' in line)


def registered_user(prosody, gateway, prefix: str) -> str:
    """A user registered with the gateway, logged out again (for cases that fill the queue first)."""

    async def register():
        client = await registered_client(prosody, gateway.domain, prefix, Client)
        await client.stop()
        return client.boundjid.bare

    return run(register())


def insert_inbound(db: str, component: str, user: str, rows: list[dict]) -> None:
    """Put inbound messages straight into the queue, as an adapter would have stored them."""
    now = time.time()
    conn = sqlite3.connect(db)
    with conn:
        for n, extra in enumerate(rows):
            payload = {"component": component, "user": user, "sender": "injected", "type": "chat",
                       "id": uuid.uuid4().hex, **extra}
            conn.execute("INSERT INTO queue (id, component, jid, direction, payload, attempts, next_attempt, "
                         "deadline, created_at) VALUES (?, ?, ?, 'in', ?, 0, ?, ?, ?)",
                         (payload["id"], component, user, json.dumps(payload), now, now + 86400, now + n * 1e-4))
    conn.close()


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(prosody, fresh_dir):
    """The gateway is SIGKILLed at random moments under two-way traffic and restarted each time."""
    kills = 12 if LONG else 3
    seed = int(os.environ.get("FAULT_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    print(f"FAULT_SEED={seed}")
    gateway = start_gateway(prosody, fresh_dir, "fkill", options={"delay": 0.3})

    async def scenario():
        clients = [await registered_client(prosody, gateway.domain, f"k{i}", Client) for i in range(2)]
        contacts = [f"c{j}@{gateway.domain}" for j in range(3)]
        ledger = Ledger()
        try:
            for k in range(kills):
                await steady(clients, ledger, contacts, rng.uniform(0.5, 2.0), rate=20, prefix=f"k{k}")
                gateway.kill()
                ledger.killed(gateway.db)
                for c in clients:
                    await server_knows_it_is_gone(c, gateway.domain, ledger)
                await steady(clients, ledger, contacts, rng.uniform(0.0, 0.5), rate=20, prefix=f"d{k}")
                since = len(gateway.log())
                gateway.start(wait_authenticated=0)
                while ": authenticated" not in gateway.log()[since:]:
                    await pump(clients, ledger, 0.1)
            await steady(clients, ledger, contacts, 1.0, rate=20, prefix="end")
            await drain(clients, ledger, settle=3.0)
            return ledger
        finally:
            for c in clients:
                await c.stop()

    ledger = run_then_stop(gateway, scenario(), timeout=120 + 20 * kills)
    assert_clean(ledger, f"{kills} SIGKILLs, seed {seed}")


def test_a_lease_shorter_than_a_send_duplicates_nothing(prosody, fresh_dir):
    """Sends take 2.5 s, leases last 1 s: renewal and the fence keep each message to one send."""
    gateway = start_gateway(prosody, fresh_dir, "flease", options={"delay": 2.5}, outbox={"lease": 1.0})

    async def scenario():
        client = await registered_client(prosody, gateway.domain, "lease", Client)
        ledger = Ledger()
        try:
            for n in range(10):
                ledger.send(client, f"slow@{gateway.domain}", f"lease-{n}")
            await drain([client], ledger, settle=4.0, timeout=30)
            return ledger
        finally:
            await client.stop()

    ledger = run_then_stop(gateway, scenario())
    assert_clean(ledger, "lease 1 s, sends 2.5 s")
    assert len(ledger.received) == 10


def test_registry_commands_next_to_a_live_gateway_resend_nothing(prosody, fresh_dir):
    """`registry export` and `list` mid-traffic leave the live gateway's claims alone."""
    gateway = start_gateway(prosody, fresh_dir, "fexport", options={"delay": 2.0})

    async def scenario():
        client = await registered_client(prosody, gateway.domain, "exp", Client)
        ledger = Ledger()
        try:
            for n in range(10):
                ledger.send(client, f"c{n % 2}@{gateway.domain}", f"export-{n}")
            await pump([client], ledger, 0.5)                  # all ten in flight, claimed by the gateway
            export = cli(gateway, "registry", "export", os.path.join(fresh_dir, "backup.json"))
            assert export.returncode == 0, export.stderr
            listed = cli(gateway, "registry", "list")
            assert listed.returncode == 0 and "exp" in listed.stdout, listed.stderr
            await drain([client], ledger, settle=3.0, timeout=20)
            return ledger
        finally:
            await client.stop()

    ledger = run_then_stop(gateway, scenario())
    assert_clean(ledger, "registry export mid-traffic")
    assert json.load(open(os.path.join(fresh_dir, "backup.json")))["registrations"]


def test_a_poison_inbound_row_is_parked_and_the_rest_flows(prosody, fresh_dir):
    """A held row that cannot become a stanza is parked with its reason; the rows behind it are delivered."""
    gateway = start_gateway(prosody, fresh_dir, "fpoison")

    user = registered_user(prosody, gateway, "poison")
    gateway.stop()
    # An IRC server-time of 2024-01-01T00:00:00.5e400Z once became this: a timestamp no date can hold.
    insert_inbound(gateway.db, gateway.domain, user,
                   [{"body": "poison", "timestamp": float("inf")}]
                   + [{"body": f"after-poison-{n}"} for n in range(5)])
    gateway.start()

    async def scenario():
        client = await Client(user, "pw").start(prosody.c2s_port)
        ledger = Ledger()
        for n in range(5):
            ledger.expect(f"after-poison-{n}")
        try:
            ledger.send(client, f"live@{gateway.domain}", "live traffic")
            await drain([client], ledger, settle=1.0, timeout=15)
            return ledger
        finally:
            await client.stop()

    ledger = run_then_stop(gateway, scenario())
    assert_clean(ledger, "poison row")
    assert ledger.received["poison"] == 0
    listed = cli(gateway, "queue", "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert len(rows) == 1 and rows[0][2] == "in" and rows[0][4] == "parked", listed.stdout
    assert "OverflowError" in rows[0][6] or "out of range" in rows[0][6], rows[0]
    assert "parked" in gateway.log()
    dropped = cli(gateway, "queue", "drop", rows[0][0])
    assert dropped.returncode == 0 and "1 parked row(s) dropped" in dropped.stdout
    assert cli(gateway, "queue", "list").stdout == ""


def test_half_open_link_loses_no_inbound_message(prosody, fresh_dir):
    """
    The server is SIGSTOPped past the ping timeout while megabytes of replies
    are written to it, then SIGCONTed. What filled the socket buffers when
    the gateway gave up on the stream is written again on the next one.
    """
    gateway = start_gateway(prosody, fresh_dir, "fstop", options={"delay": 3.0}, web=True,
                            xmpp={"ping_interval": 2.0, "ping_timeout": 3.0})
    padding = "p" * 30000

    async def scenario():
        client = await registered_client(prosody, gateway.domain, "stop", Client)
        ledger = Ledger()
        try:
            before = messages_received(gateway)
            for n in range(300):                      # 9 MB of replies, more than the socket buffers hold
                ledger.send(client, f"c@{gateway.domain}", f"before-{n} {padding}")
            # Pause only once the gateway has all 300: what the server loses of its own is not ours to count.
            while messages_received(gateway) < before + 300:
                await pump([client], ledger, 0.05)
            since = len(gateway.log())
            prosody.pause()                           # the replies (due 3 s after each message) meet a frozen server
            # A frozen server is found within one to two ping timeouts of the first reply written to it.
            deadline = time.monotonic() + 3.0 + 2 * 3.0 + 10.0
            while "dropping it" not in gateway.log()[since:] and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)                  # more replies pile up while the stream is down
            prosody.resume()
            await drain([client], ledger, settle=3.0, timeout=60)
            return ledger
        finally:
            prosody.resume()
            await client.stop()

    ledger = run_then_stop(gateway, scenario(), timeout=120)
    assert_clean(ledger, "half-open link")
    assert "dropping it" in gateway.log()


def test_server_sigkill_loses_no_inbound_message(prosody, fresh_dir):
    """Replies produced while the XMPP server is dead are held, and delivered once it is back."""
    gateway = start_gateway(prosody, fresh_dir, "fserverkill", options={"delay": 2.0})

    async def scenario():
        client = await registered_client(prosody, gateway.domain, "skill", Client)
        user = client.boundjid.bare
        ledger = Ledger()
        await steady([client], ledger, [f"c{n}@{gateway.domain}" for n in range(3)], 1.0, rate=20)
        await pump([client], ledger, 0.3)
        prosody.kill()                               # the replies to those come in 1-2 s: the server is gone
        await asyncio.sleep(3.0)
        since = len(gateway.log())
        prosody.start()
        client = await Client(user, "pw").start(prosody.c2s_port)   # offline storage keeps what came meanwhile
        try:
            while ": authenticated" not in gateway.log()[since:]:
                await pump([client], ledger, 0.1)
            await drain([client], ledger, settle=3.0, timeout=30)
            return ledger
        finally:
            await client.stop()

    ledger = run_then_stop(gateway, scenario(), timeout=90)
    assert_clean(ledger, "server SIGKILL")


def test_a_backlog_slower_than_the_ping_timeout_keeps_the_stream(prosody, fresh_dir):
    """
    Thousands of stanzas written at once: the answer to a ping sits behind them
    for longer than the ping timeout, but the server keeps reading, so the
    stream stays up and every message arrives once.
    """
    count = 30000 if LONG else 12000
    gateway = start_gateway(prosody, fresh_dir, "fbacklog", xmpp={"ping_interval": 0.5, "ping_timeout": 0.5})

    user = registered_user(prosody, gateway, "backlog")
    gateway.stop()
    padding = "x" * 1000
    insert_inbound(gateway.db, gateway.domain, user, [{"body": f"backlog-{n} {padding}"} for n in range(count)])
    since = len(gateway.log())
    gateway.start()

    async def scenario():
        client = await Client(user, "pw").start(prosody.c2s_port)
        ledger = Ledger()
        for n in range(count):
            ledger.expect(f"backlog-{n} {padding}")
        try:
            await drain([client], ledger, settle=2.0, timeout=120)
            return ledger
        finally:
            await client.stop()

    ledger = run_then_stop(gateway, scenario(), timeout=180)
    assert_clean(ledger, f"backlog of {count}")
    log = gateway.log()[since:]
    assert "dropping it" not in log and log.count(": authenticated") == 1, log[-3000:]


def test_conflict_is_retried_until_the_stale_session_goes(prosody, fresh_dir):
    """Another connection holds the domain (a stale session): the gateway retries instead of exiting."""
    import hashlib

    domain = "fconflict.localhost"
    raw = socket.create_connection(("127.0.0.1", prosody.component_port))
    raw.sendall(f"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' "
                f"to='{domain}'>".encode())
    head = raw.recv(4096).decode()
    stream_id = head.split("id='")[1].split("'")[0] if "id='" in head else head.split('id="')[1].split('"')[0]
    raw.sendall(f"<handshake>{hashlib.sha1((stream_id + COMPONENTS[domain]).encode()).hexdigest()}</handshake>"
                .encode())
    assert b"<handshake" in raw.recv(4096)
    gateway = start_gateway(prosody, fresh_dir, "fconflict", wait=0)
    try:
        gateway.wait_log("conflict", timeout=20)
        time.sleep(1.5)
        assert gateway.proc.poll() is None, gateway.log()[-2000:]
        raw.close()                                   # the stale session goes away
        gateway.wait_log(": authenticated", timeout=30)
    finally:
        raw.close()
        gateway.stop()


def test_a_second_process_on_the_same_sqlite_registry_is_refused(prosody, fresh_dir):
    """Two processes on one SQLite file would release each other's claims: the second one must not start."""
    first = start_gateway(prosody, fresh_dir, "fexport")
    second = start_gateway(prosody, fresh_dir, "fconflict", wait=0,
                           registry_url=f"sqlite:///{fresh_dir}/fexport.sqlite")
    try:
        code = second.proc.wait(30)
        log = second.log()
        assert code == 2, log[-2000:]
        assert "another gateway process" in log and "SQLite serves one process" in log, log[-2000:]
        assert first.proc.poll() is None
    finally:
        second.kill()
        first.stop()
