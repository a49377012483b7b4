"""
The built-in identd (RFC 1413), end to end: the real gateway process with
``identd_listen`` on 127.0.0.1:113, a real ngircd that asks ident (``Ident =
yes``, which in ngircd 26 needs ``DNS = yes``), real Prosody and slixmpp. The
test is the ident client for the raw queries, and a raw IRC client for WHOIS.

ngircd always asks port 113 of the client's address: there is no other port
to point it at, so the test needs 127.0.0.1:113 free (it runs as root here) and
is skipped, saying so, when it is not.

Every wait is on a condition with a generous bound.
"""

import asyncio
import os
import re
import socket
import subprocess

import pytest

from gateway.adapters.irc.identd import ident_token
from gateway.service import token_key
from gateway.testing.ngircd import Ngircd
from tests.integration.gateway_fixture import start_gateway
from gateway.testing.process import wait_for
from tests.integration.harness import Client, http_get, run
from tests.integration.irc_support import RawIRC

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
DOMAIN = "ircident.localhost"


def _port_113_free() -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", 113))
            return True
        except OSError:
            return False


needs_port_113 = pytest.mark.skipif(not _port_113_free(), reason="127.0.0.1:113 is taken (or not ours to bind): "
                                                                 "ngircd asks ident there and nowhere else")


def statuses(p) -> set[int]:
    return {int(s.get("code")) for s in p.findall(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}status")}


async def query(line: bytes, timeout: float = 15.0) -> bytes:
    """One raw ident query; everything the server sent until it closed (b"" if it just closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", 113)
    writer.write(line)
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def gateway_ports(pid: int, server_port: int) -> list[int]:
    """Local ports of the gateway process's TCP connections to the IRC server (ss, from iproute2: scripts/install.sh)."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :{server_port} )"],
                         capture_output=True, text=True, check=True).stdout
    return [int(line.split()[2].rsplit(":", 1)[1]) for line in out.splitlines() if f"pid={pid}," in line]


@pytest.fixture
def ident_ircd(workdir):
    server = Ngircd(os.path.join(workdir, "ngircd-ident"), ident=True).start()
    yield server
    server.stop()


@needs_port_113
def test_identd_answers_for_the_users_connection_and_ngircd_shows_no_tilde(prosody, ident_ircd, fresh_dir):
    gateway = start_gateway(prosody, fresh_dir, "ircident", adapter="irc", options={
        "servers": {"localhost": {"host": "127.0.0.1", "port": ident_ircd.port, "tls": False}},
        "identd_listen": "tcp:113:interface=127.0.0.1", "throttle_rate": 0.0})
    user = prosody.register(f"identuser{os.getpid()}", "pw")
    token = ident_token(token_key(gateway.key), user)
    assert re.fullmatch(r"[a-z2-7]{10}", token)
    room = f"#ident%localhost@{DOMAIN}"

    async def scenario():
        watcher = await RawIRC(ident_ircd.port, "watcher").connect()
        watcher.send("JOIN #ident")
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            client.send_raw(f"<presence to='{room}/identnick'><x xmlns='{NS_MUC}'/></presence>")
            await client.next_presence(lambda p: p.get("from") == f"{room}/identnick" and 110 in statuses(p),
                                       timeout=30)
            joined = await watcher.expect(lambda l: l.startswith(":identnick!") and " JOIN " in l, timeout=30)
            assert joined.startswith(f":identnick!{token}@"), joined      # no ~: ngircd got our answer
            watcher.send("WHOIS identnick")
            whois = await watcher.expect(lambda l: " 311 watcher identnick " in l)
            assert whois.split()[4] == token, whois

            ports = gateway_ports(gateway.proc.pid, ident_ircd.port)
            assert len(ports) == 1, ports
            ours = ports[0]
            answer = await query(f"{ours} , {ident_ircd.port}\r\n".encode())
            assert answer == f"{ours}, {ident_ircd.port} : USERID : UNIX : {token}\r\n".encode(), answer
            answer = await query(f"{ours},{ident_ircd.port}\n".encode())            # LF alone, no spaces
            assert answer.endswith(f": USERID : UNIX : {token}\r\n".encode()), answer
            # a wrong pair: the server's port off by one, our port off by one
            answer = await query(f"{ours} , {ident_ircd.port + 1}\r\n".encode())
            assert answer == f"{ours}, {ident_ircd.port + 1} : ERROR : NO-USER\r\n".encode(), answer
            answer = await query(f"{ours + 1} , {ident_ircd.port}\r\n".encode())
            assert answer.endswith(b" : ERROR : NO-USER\r\n"), answer
            # garbage and ports out of range
            for bad in (b"hello world\r\n", b"+5 , 6667\r\n", b"1_000 , 6667\r\n", b"\xff\xfe , 1\r\n"):
                answer = await query(bad)
                assert answer == b"0, 0 : ERROR : INVALID-PORT\r\n", (bad, answer)
            answer = await query(b"70000 , 6667\r\n")
            assert answer == b"70000, 6667 : ERROR : INVALID-PORT\r\n", answer
            answer = await query(b"0 , 6667\r\n")
            assert answer == b"0, 6667 : ERROR : INVALID-PORT\r\n", answer
            # a hostile long line: closed, no answer, and the identd still answers after it
            answer = await query(b"1" * 5000)
            assert answer == b"", answer
            answer = await query(f"{ours} , {ident_ircd.port}\r\n".encode())
            assert answer.endswith(f": USERID : UNIX : {token}\r\n".encode()), answer
            # one query per connection: a second line gets nothing
            answer = await query(f"{ours} , {ident_ircd.port}\r\n{ours} , {ident_ircd.port}\r\n".encode())
            assert answer.count(b"USERID") == 1, answer
            # silence: closed after the identd's 10 s, well within the bound
            started = asyncio.get_running_loop().time()
            answer = await query(b"", timeout=30)
            assert answer == b"" and asyncio.get_running_loop().time() - started < 25
            # the cap per address: 16 held open, the 17th closed at once, then places free again
            held = [await asyncio.open_connection("127.0.0.1", 113) for _ in range(16)]
            started = asyncio.get_running_loop().time()
            answer = await query(f"{ours} , {ident_ircd.port}\r\n".encode())
            assert answer == b"" and asyncio.get_running_loop().time() - started < 5, answer
            for _, writer in held:
                writer.close()
            for _ in range(100):                                   # until the identd has seen them go
                answer = await query(f"{ours} , {ident_ircd.port}\r\n".encode())
                if answer:
                    break
                await asyncio.sleep(0.1)
            assert answer.endswith(f": USERID : UNIX : {token}\r\n".encode()), answer
        finally:
            await client.stop()
            await watcher.close()

    try:
        run(scenario(), timeout=90)
    finally:
        gateway.stop()
    assert "Traceback" not in gateway.log()


def test_an_identd_that_cannot_bind_is_a_health_problem_and_irc_still_works(prosody, fresh_dir):
    """The port taken: /healthz says 503 naming the identd listener; the gateway still starts and serves."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        gateway = start_gateway(prosody, fresh_dir, "ircident", adapter="irc", web=True, options={
            "identd_listen": f"tcp:{port}:interface=127.0.0.1"})
        try:
            url = f"http://127.0.0.1:{gateway.web_port}/healthz"

            def answered():
                try:
                    return http_get(url)
                except OSError:
                    return None

            wait_for(lambda: answered() is not None, 20, "the web port")
            status, text = answered()
            assert status == 503 and "identd listener" in text and str(port) in text, (status, text)
        finally:
            gateway.stop()
    finally:
        taken.close()
    assert "identd: listener" in gateway.log()
