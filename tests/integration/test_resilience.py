"""
What happens when things go wrong: users who may not use the gateway, an XMPP
server restart, a gateway killed with messages in its outbox, a network that
is down past the deadline or refuses, limits, and a wrong component secret.
"""

import asyncio
import os
import sqlite3
import time

import pytest

from tests.integration.gateway_fixture import registered_client, start_gateway
from tests.integration.harness import Client, body, error_condition, http_get, run, run_then_stop


def test_users_of_other_domains_are_refused(xmpp_server, fresh_dir):
    server = xmpp_server
    gateway = start_gateway(server, fresh_dir, "stranger")
    stranger = server.register(f"eve{os.getpid()}", "pw", host="stranger.test")

    async def scenario():
        client = await Client(stranger, "pw").start(server.c2s_port)
        try:
            cond, text = await client.iq_error(gateway.domain, "get", "<query xmlns='jabber:iq:register'/>")
            assert cond == "forbidden" and "stranger.test" in text
            cond, _ = await client.iq_error(gateway.domain, "set",
                                            "<query xmlns='jabber:iq:register'><username>eve</username></query>")
            assert cond == "forbidden"
            cond, _ = await client.iq_error(gateway.domain, "get",
                                            "<query xmlns='http://jabber.org/protocol/disco#info'/>")
            assert cond == "service-unavailable"
            client.send_chat(f"bob@{gateway.domain}", "let me in")
            err = await client.next_message(lambda m: m.get("type") == "error")
            assert error_condition(err)[0] == "service-unavailable"
        finally:
            await client.stop()

    run_then_stop(gateway, scenario())
    assert sqlite3.connect(gateway.db).execute("SELECT COUNT(*) FROM registrations").fetchone()[0] == 0


def test_server_restart_reconnects_and_holds_inbound(xmpp_server, fresh_dir):
    server = xmpp_server
    gateway = start_gateway(server, fresh_dir, "restart", options={"delay": 2.0}, web=True)
    health = f"http://127.0.0.1:{gateway.web_port}/healthz"

    async def before():
        client = await registered_client(server, gateway.domain, "rita", Client)
        assert http_get(health)[0] == 200
        client.send_chat(f"echo@{gateway.domain}", "sent before the restart")
        await asyncio.sleep(0.3)          # accepted into the outbox; its echo comes in 2 s
        await client.stop()
        return client.boundjid.bare

    user = run(before())
    server.stop()
    time.sleep(2.5)                       # the echo arrives while the stream is down: held
    status, text = http_get(health)
    assert status == 503 and '"restart.localhost": false' in text
    held = sqlite3.connect(gateway.db).execute("SELECT COUNT(*) FROM queue WHERE direction = 'in'").fetchone()[0]
    assert held == 1
    since = len(gateway.log())
    server.start()
    gateway.wait_log(": authenticated", since=since)

    async def after():
        client = await Client(user, "pw").start(server.c2s_port)
        try:
            held_echo = await client.next_message(lambda m: body(m) == "sent before the restart")
            assert held_echo.get("from").startswith("echo@restart.localhost")
            client.send_chat(f"echo@{gateway.domain}", "after the restart")
            await client.next_message(lambda m: body(m) == "after the restart")
            assert http_get(health)[0] == 200
        finally:
            await client.stop()

    run_then_stop(gateway, after())


def test_sigkill_with_a_full_outbox_delivers_each_message_once(xmpp_server, fresh_dir):
    server = xmpp_server
    gateway = start_gateway(server, fresh_dir, "kill", options={"delay": 1.0})
    bodies = [f"kill-test {n}" for n in range(6)]

    async def scenario():
        client = await registered_client(server, gateway.domain, "kim", Client)
        try:
            for b in bodies:
                client.send_chat(f"echo@{gateway.domain}", b)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                n = sqlite3.connect(gateway.db).execute(
                    "SELECT COUNT(*) FROM queue WHERE direction = 'out'").fetchone()[0]
                if n == len(bodies):
                    break
                await asyncio.sleep(0.05)
            assert n == len(bodies)
            gateway.kill()                                  # SIGKILL: no goodbye, no cleanup
            await asyncio.sleep(1.0)
            assert await client.quiet(seconds=0.5, predicate=lambda m: body(m) in bodies) == []
            gateway.start()
            # One conversation is sent in order, one message at a time: about 1 s each.
            got = [await client.next_message(lambda m: body(m) in bodies, timeout=15) for _ in bodies]
            got += await client.quiet(seconds=2.0, predicate=lambda m: body(m) in bodies)
            assert [body(m) for m in got] == bodies          # each once, in order
        finally:
            await client.stop()

    run_then_stop(gateway, scenario())
    assert sqlite3.connect(gateway.db).execute("SELECT COUNT(*) FROM queue").fetchone()[0] == 0


def test_deadline_and_permanent_failures_reach_the_sender(xmpp_server, fresh_dir):
    server = xmpp_server
    gateway = start_gateway(server, fresh_dir, "deadline",
                            options={"unreachable": ["down"], "rejecting": ["wall"]},
                            outbox={"deadline": 2.0, "retry_initial": 0.3, "retry_max": 0.5})

    async def scenario():
        client = await registered_client(server, gateway.domain, "dan", Client)
        try:
            started = time.monotonic()
            down_id = client.send_chat(f"down@{gateway.domain}", "are you there?")
            wall_id = client.send_chat(f"wall@{gateway.domain}", "hello wall")
            err = await client.next_message(lambda m: m.get("id") == wall_id)
            assert err.get("type") == "error"
            assert error_condition(err) == ("not-acceptable", "wall does not accept messages")
            client.send_chat(f"up@{gateway.domain}", "others still work")
            await client.next_message(lambda m: body(m) == "others still work")
            err = await client.next_message(lambda m: m.get("id") == down_id, timeout=10)
            waited = time.monotonic() - started
            assert err.get("type") == "error" and err.get("from").startswith("down@")
            cond, text = error_condition(err)
            assert cond == "remote-server-timeout"
            assert "within 2 s" in text and "down cannot be reached" in text
            assert 1.5 < waited < 6, waited
        finally:
            await client.stop()

    run_then_stop(gateway, scenario())
    assert "retry" in gateway.log()


def test_rate_and_size_limits(xmpp_server, fresh_dir):
    server = xmpp_server
    gateway = start_gateway(server, fresh_dir, "limits", limits={"rate": 0.5, "burst": 3},
                            xmpp={"stanza_size_limit": 3000})

    async def scenario():
        client = await registered_client(server, gateway.domain, "lim", Client)
        try:
            ids = [client.send_chat(f"echo@{gateway.domain}", f"burst {n}") for n in range(5)]
            got = await client.quiet(seconds=1.5)
            echoed = sorted(body(m) for m in got if m.get("type") == "chat" and body(m))
            refused = [m for m in got if m.get("type") == "error"]
            assert echoed == ["burst 0", "burst 1", "burst 2"]
            assert sorted(m.get("id") for m in refused) == sorted(ids[3:])
            cond, text = error_condition(refused[0])
            assert cond == "policy-violation" and "rate limit" in text

            big = client.send_chat(f"echo@{gateway.domain}", "x" * 5000)
            err = await client.next_message(lambda m: m.get("id") == big)
            cond, text = error_condition(err)
            assert cond == "policy-violation" and "exceeds" in text and "3000" in text
        finally:
            await client.stop()

    run_then_stop(gateway, scenario())


@pytest.mark.parametrize("case", ["wrong-secret", "unknown-domain"])
def test_fatal_component_errors_exit_clearly(xmpp_server, fresh_dir, case):
    if case == "wrong-secret":
        gateway = start_gateway(xmpp_server, fresh_dir, "secret", secret="not-the-secret", wait=0)
    else:
        from tests.integration import gateway_fixture
        gateway = start_gateway(xmpp_server, fresh_dir, "secret", wait=0)
        gateway.stop()
        # the same config with a domain the server does not serve
        text = open(gateway.config_path).read().replace('"secret.localhost"', '"nowhere.localhost"')
        open(gateway.config_path, "w").write(text)
        gateway = gateway_fixture.GatewayProcess(gateway.config_path, gateway.logfile)
        gateway.start(wait_authenticated=0)
    try:
        code = gateway.proc.wait(20)
    finally:
        gateway.kill()
    log = gateway.log()
    assert code == 2, log[-2000:]
    if case == "wrong-secret":
        assert "the server refused the component secret" in log, log[-2000:]
        assert log.count("connected to 127.0.0.1") == 1        # no reconnect loop
        assert "not-the-secret" not in log
    else:
        assert "nowhere.localhost" in log and "stream error" in log, log[-2000:]
