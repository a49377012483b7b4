"""
An adversarial review of the issue-9 hardening: each case is an attack that
got past it, against the real gateway process (a real Prosody, slixmpp users;
the test is the IRC server where the attacker is one).
"""

from __future__ import annotations

import asyncio
import os

import pytest

from gateway.testing.process import free_port
from tests.hostile.conftest import rss_kib, start_gateway
from tests.integration.harness import Client, run

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"

_users = iter(range(1, 1000))


def user_name(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_users)}"


def statuses(p) -> set[int]:
    return {int(s.get("code")) for s in p.findall(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}status")}


class ScriptIRC:
    """
    A minimal IRC server: registers the client, answers JOIN with ``on_join``
    (a coroutine given the writer, the nick and the channel), and records the
    PONGs the client sends, so a test knows when everything before was read.
    """

    def __init__(self, port: int, on_join):
        self.port = port
        self.on_join = on_join
        self.pongs: asyncio.Queue = asyncio.Queue()
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> "ScriptIRC":
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        return self

    async def _client(self, reader, writer) -> None:
        nick = "x"
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("CAP LS"):
                    writer.write(b":evil.test CAP * LS :\r\n")
                elif line.startswith("NICK "):
                    nick = line.split(" ", 1)[1]
                elif line == "CAP END":
                    writer.write(f":evil.test 001 {nick} :Welcome\r\n".encode())
                elif line.startswith("PONG"):
                    self.pongs.put_nowait(line)
                elif line.startswith("JOIN "):
                    channel = line.split(" ")[1]
                    writer.write(f":{nick}!u@h JOIN {channel}\r\n".encode())
                    task = asyncio.ensure_future(self.on_join(writer, nick, channel))
                    self.tasks.add(task)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()


# -- IRC: names of absurd length --------------------------------------------------------

#: Names sent, each this long: a NAMES line holds one (IRC's line limit here is 8,703 bytes).
LONG_NAME = 8000
LONG_NAMES = 8000              # 64 MB of names, below the default max_names (10,000)
NAMES_RSS_BOUND_KIB = 24 * 1024


def test_names_of_absurd_length_are_not_kept(hostile_prosody, fresh_dir):
    """
    ``max_names`` counts names, not bytes: a server sending 8,000 names of
    8,000 bytes each (and no end of NAMES) made the gateway hold 64 MB for one
    join of one user (4 GB for the default 50 rooms). A name longer than any
    JID resource the gateway would make of it is not kept; the join still
    completes with the ordinary names.
    """
    port = free_port()
    gateway = start_gateway(hostile_prosody, fresh_dir, "hadv", adapter="irc", options={
        "throttle_rate": 0.0, "servers": {"evil.test": {"host": "127.0.0.1", "port": port, "tls": False}}})
    user = hostile_prosody.register(user_name("hadvnames"), "pw")
    room = f"#big%evil.test@{gateway.domain}"
    go_on = asyncio.Event()
    measured = {}

    async def on_join(writer, nick, channel):
        writer.write(f":evil.test 353 {nick} = {channel} :{nick} @op plain\r\n".encode())
        await writer.drain()
        measured["before"] = rss_kib(gateway.proc.pid)
        for n in range(LONG_NAMES):
            name = f"n{n:05d}" + "x" * (LONG_NAME - 6)
            writer.write(f":evil.test 353 {nick} = {channel} :{name}\r\n".encode())
            if n % 200 == 0:
                await writer.drain()
        writer.write(b"PING :read-it-all\r\n")
        await writer.drain()
        await go_on.wait()
        writer.write(f":evil.test 366 {nick} {channel} :End of NAMES\r\n".encode())
        await writer.drain()

    async def body_():
        irc = await ScriptIRC(port, on_join).start()
        client = await Client(user, "pw").start(hostile_prosody.c2s_port)
        try:
            client.send_raw(f"<presence to='{room}/me'><x xmlns='{NS_MUC}'/></presence>")
            await asyncio.wait_for(irc.pongs.get(), 60)            # the gateway has read every name
            grown = rss_kib(gateway.proc.pid) - measured["before"]
            go_on.set()
            occupants = set()
            while True:
                p = await client.next_presence(lambda p: p.get("from", "").startswith(room + "/"), timeout=30)
                if 110 in statuses(p):
                    break
                occupants.add(p.get("from").split("/", 1)[1])
            assert grown < NAMES_RSS_BOUND_KIB, f"RSS grew by {grown} KiB holding one NAMES reply"
            assert occupants == {"op", "plain"}, (len(occupants), sorted(o[:20] for o in occupants)[:3])
        finally:
            await client.stop()
            irc.close()

    try:
        run(body_(), timeout=120)
    finally:
        gateway.stop()


# -- IRC: a port that is a digit to str.isdigit but no number to int ---------------------


async def configure(client, server_jid: str, fields: dict):
    """Run the per-server "configure" command; the completing IQ's answer (result or error)."""
    from slixmpp.exceptions import IqError
    first = await client.plugin["xep_0050"].send_command(server_jid, "configure", timeout=10)
    done = client.Iq(stype="set", sto=server_jid)
    done["command"]["node"] = "configure"
    done["command"]["sessionid"] = first["command"]["sessionid"]
    done["command"]["action"] = "complete"
    form = done["command"]["form"]
    form["type"] = "submit"
    for key, value in fields.items():
        form.add_field(key, value=value)
    try:
        return await done.send(timeout=10)
    except IqError as e:
        return e.iq


def test_a_port_int_cannot_read_is_refused_and_the_user_can_still_join(hostile_prosody, fresh_dir):
    """
    The configure form took any port ``str.isdigit`` accepts, such as "²"
    (SUPERSCRIPT TWO), which ``int`` cannot read: the next join raised in the
    middle of connecting and left the user's session for that server half made,
    so every later join there went unanswered until the gateway restarted.
    The port is refused with bad-request; a join afterwards gets an answer.
    """
    gateway = start_gateway(hostile_prosody, fresh_dir, "hadv2", adapter="irc", options={"throttle_rate": 0.0})
    user = hostile_prosody.register(user_name("hadvport"), "pw")
    d = gateway.domain

    async def body_():
        client = await Client(user, "pw").start(hostile_prosody.c2s_port)
        try:
            for port in ("\u00b2", "\u0666\u0666\u0666\u0667", "0", "70000"):
                answer = await configure(client, f"irc.example.invalid@{d}", {"tls": "no", "port": port})
                assert answer["type"] == "error", (port, answer)
                assert answer["error"]["condition"] in ("bad-request", "not-acceptable"), answer
                assert "port" in answer["error"]["text"], answer
            room = f"#x%irc.example.invalid@{d}"
            for _ in range(2):
                client.send_raw(f"<presence to='{room}/me'><x xmlns='{NS_MUC}'/></presence>")
                err = await client.next_presence(lambda p: p.get("type") == "error"
                                                 and p.get("from", "").startswith(room), timeout=30)
                assert err is not None
        finally:
            await client.stop()

    try:
        run(body_(), timeout=120)
    finally:
        gateway.stop()


# -- web: many requests, each just under its body limit ---------------------------------

HOOK_LIMIT = 256 * 1024          # the SMS webhook's default limit
HELD_CONNECTIONS = 300           # 75 MB of bodies, each under the limit
WEB_RSS_BOUND_KIB = 48 * 1024


def test_bodies_held_open_on_many_connections_are_bounded_together(hostile_prosody, fresh_dir):
    """
    Each request's body is bounded, but not all of them together: 300
    connections each sending a body one byte short of the webhook's 256 KiB
    and then waiting (one byte a minute keeps a connection alive) made the
    gateway hold 75 MB. Bodies in flight share one budget
    (``web.max_bodies_in_flight``); a body past it is answered 503 and its
    connection closed, and the site answers other requests meanwhile.
    """
    import select
    import socket
    import time

    from tests.integration.harness import http_get

    port = free_port()
    gateway = start_gateway(hostile_prosody, fresh_dir, "hadv3", adapter="sms", web_port=port, options={
        "provider": "twilio", "account_sid": "AC" + "0" * 31 + "7", "auth_token": "a" * 32,
        "api_url": "http://127.0.0.1:9", "public_url": f"http://127.0.0.1:{port}", "default_region": "US"})
    path = "/hooks/hadv3.localhost/twilio/inbound"
    socks: list[socket.socket] = []
    try:
        before = rss_kib(gateway.proc.pid)
        body = b"a" * (HOOK_LIMIT - 1)
        for _ in range(HELD_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", port), timeout=20)
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                      f"Content-Length: {HOOK_LIMIT}\r\n\r\n".encode() + body)
            socks.append(s)
        # Everything sent has been read (or refused) once the site answers a request after it.
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _ = http_get(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline, "the web site stopped answering"
                time.sleep(0.5)
        time.sleep(1.0)
        grown = rss_kib(gateway.proc.pid) - before
        refused = 0
        readable, _, _ = select.select(socks, [], [], 0)
        for s in readable:
            try:
                if s.recv(64).startswith(b"HTTP/1.1 503"):
                    refused += 1
            except ConnectionError:
                pass
        assert grown < WEB_RSS_BOUND_KIB, f"RSS grew by {grown} KiB with {HELD_CONNECTIONS} bodies held open"
        assert refused > 0, "no request was refused"
        for s in socks:
            s.close()
        # Their bodies leave the budget with their connections: a caller now gets through (an unsigned
        # request: refused for its signature, not for the budget).
        deadline, status = time.monotonic() + 30, None
        while status in (None, 503) and time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
                          f"\r\nContent-Length: {HOOK_LIMIT - 1}\r\nConnection: close\r\n\r\n".encode() + body)
                status = int(s.recv(64).split()[1])
            if status == 503:
                time.sleep(0.5)
        assert status not in (None, 503), status
    finally:
        for s in socks:
            s.close()
        gateway.stop()
