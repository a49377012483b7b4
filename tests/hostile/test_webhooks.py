"""
A hostile webhook caller against the real gateway's web port: bodies far over
the limit (declared or streamed), oversized heads, forged and replayed
signatures, and a sender whose address no JID can carry.

Requests are written on raw sockets, as an attacker would: an HTTP library
would not send a 1 GB Content-Length without the body, nor stop on our answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import socket
import threading
import time
import urllib.parse

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.testing.process import free_port
from gateway.testing.twilio_simulator import twilio_signature
from tests.hostile.conftest import rss_kib, start_gateway
from tests.integration.gateway_fixture import registered_client
from tests.integration.harness import Client, body, http_get, run

ACCOUNT_SID = "AC" + "0" * 31 + "7"
AUTH_TOKEN = "hostile-auth-token-0000000000000"
LIMIT = 256 * 1024
CONTACT = "+12025550188"
_numbers = iter(range(100, 10000))


def new_number() -> str:
    return f"+1415556{next(_numbers):04d}"


@pytest.fixture(scope="module")
def twilio_gw(hostile_prosody, workdir):
    path = os.path.join(workdir, "hhook")
    os.makedirs(path, exist_ok=True)
    port = free_port()
    gateway = start_gateway(hostile_prosody, path, "hhook", adapter="sms", web_port=port,
                            options={"provider": "twilio", "account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN,
                                     "api_url": "http://127.0.0.1:9", "public_url": f"http://127.0.0.1:{port}",
                                     "default_region": "US"})
    gateway.path = "/hooks/hhook.localhost/twilio/inbound"
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def telnyx_key():
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def telnyx_gw(hostile_prosody, workdir, telnyx_key):
    path = os.path.join(workdir, "hhook2")
    os.makedirs(path, exist_ok=True)
    port = free_port()
    public = base64.b64encode(telnyx_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    gateway = start_gateway(hostile_prosody, path, "hhook2", adapter="sms", web_port=port,
                            options={"provider": "telnyx", "telnyx_api_key": "KEY", "telnyx_public_key": public,
                                     "api_url": "http://127.0.0.1:9", "public_url": f"http://127.0.0.1:{port}",
                                     "default_region": "US", "telnyx_tolerance": 300.0})
    gateway.path = "/hooks/hhook2.localhost/telnyx/inbound"
    yield gateway
    gateway.stop()


# -- raw HTTP ----------------------------------------------------------------

def read_all(sock: socket.socket, timeout: float = 20.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or ``timeout`` passes (False)."""
    sock.settimeout(timeout)
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return got, False
        except ConnectionResetError:
            return got, True
        if not chunk:
            return got, True
        got += chunk
    return got, False


def status_of(response: bytes) -> int | None:
    line = response.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[1].isdigit() else None


def head(path: str, port: int, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *headers, "", ""]
    return "\r\n".join(lines).encode()


def post(port: int, path: str, data: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        extra = [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(head(path, port, f"Content-Length: {len(data)}", "Connection: close", *extra) + data)
        response, _ = read_all(sock)
    return status_of(response), response.partition(b"\r\n\r\n")[2]


def twilio_post(gw, params: list[tuple[str, str]], signature: str | None = "valid", url: str | None = None):
    url = url or f"http://127.0.0.1:{gw.web_port}{gw.path}"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signature == "valid":
        headers["X-Twilio-Signature"] = twilio_signature(AUTH_TOKEN, url, params)
    elif signature is not None:
        headers["X-Twilio-Signature"] = signature
    return post(gw.web_port, gw.path, urllib.parse.urlencode(params).encode(), headers)


def inbound_params(sender: str, to: str, text: str, sid: str | None = None) -> list[tuple[str, str]]:
    sid = sid or "SM" + secrets.token_hex(16)
    return [("AccountSid", ACCOUNT_SID), ("Body", text), ("From", sender), ("MessageSid", sid), ("NumMedia", "0"),
            ("SmsSid", sid), ("To", to)]


def temp_files(pid: int) -> list[str]:
    """Unlinked temporary files the process holds open (how twisted.web spools large bodies)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "(deleted)" in target:
            found.append(target)
    return found


# -- size limits ---------------------------------------------------------------

@pytest.mark.parametrize("expect", [False, True])
def test_a_1gb_content_length_is_refused_from_the_headers(twilio_gw, expect):
    port = twilio_gw.web_port
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        headers = ["Content-Type: application/x-www-form-urlencoded", "Content-Length: 1000000000"]
        if expect:
            headers.append("Expect: 100-continue")
        sock.sendall(head(twilio_gw.path, port, *headers))       # and not one byte of the body
        response, closed = read_all(sock)
    assert status_of(response) == 413, response[:200]
    assert b"100 Continue" not in response
    assert b"at most 262144 bytes" in response
    assert closed, "the connection must be closed after the 413"


def test_paths_without_a_mount_take_the_small_default(twilio_gw):
    port = twilio_gw.web_port
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head("/healthz", port, "Content-Length: 1000000"))
        response, closed = read_all(sock)
    assert status_of(response) == 413 and closed


def test_an_endless_chunked_body_is_cut_off_at_the_limit(twilio_gw):
    port = twilio_gw.web_port
    rss_before = rss_kib(twilio_gw.proc.pid)
    sent = 0
    stop = threading.Event()
    cap = 256 * 1024 * 1024            # the attacker would go on forever; the test gives up here

    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head(twilio_gw.path, port, "Content-Type: application/x-www-form-urlencoded",
                          "Transfer-Encoding: chunked"))

        def stream():
            nonlocal sent
            chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
            try:
                while not stop.is_set() and sent < cap:
                    sock.sendall(chunk)
                    sent += 0x10000
            except OSError:
                pass                      # the gateway closed the connection: what the test waits for

        writer = threading.Thread(target=stream, daemon=True)
        writer.start()
        response, closed = read_all(sock, timeout=30)
        stop.set()
        writer.join(10)
    assert status_of(response) == 413, response[:200]
    assert closed
    # Kernel buffers on loopback hold a few MB more than the gateway read.
    assert sent < 64 * 1024 * 1024, f"the gateway went on reading: {sent} bytes sent"
    assert rss_kib(twilio_gw.proc.pid) - rss_before < 32 * 1024


def test_a_large_body_under_the_limit_never_touches_a_temporary_file(hostile_prosody, twilio_gw):
    """twisted.web alone spools any body announced over 100 kB to a temp file, on the reactor thread."""
    number = new_number()
    port = twilio_gw.web_port

    async def scenario():
        client = await registered_client(hostile_prosody, "hhook.localhost", "hookbig", Client, {"number": number})
        try:
            text = "x" * 1000
            params = inbound_params(CONTACT, number, text) + [("Padding", "p" * 200_000)]
            data = urllib.parse.urlencode(params).encode()
            url = f"http://127.0.0.1:{port}{twilio_gw.path}"
            headers = [f"Content-Length: {len(data)}", "Content-Type: application/x-www-form-urlencoded",
                       f"X-Twilio-Signature: {twilio_signature(AUTH_TOKEN, url, params)}", "Connection: close"]
            with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                sock.sendall(head(twilio_gw.path, port, *headers) + data[:1000])
                spooled = []
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline and not spooled:
                    spooled = temp_files(twilio_gw.proc.pid)
                    await asyncio.sleep(0.05)
                sock.sendall(data[1000:])
                response, _ = await asyncio.to_thread(read_all, sock)
            assert spooled == []
            assert status_of(response) == 200, response[:300]
            msg = await client.next_message(lambda m: body(m) is not None)
            assert body(msg) == text
        finally:
            await client.stop()

    run(scenario())


def test_oversized_request_heads_are_refused(twilio_gw):
    """
    Twisted's own bounds: more than 500 headers, or more than 16 KiB of request line and headers,
    get 400 and the connection closed; one line over 16 KiB closes the connection at once.
    """
    port = twilio_gw.web_port
    cases = [([f"X-H{i}: v" for i in range(600)], 400),
             ([f"X-H{i}: " + "h" * 1000 for i in range(20)], 400),
             (["X-Big: " + "b" * 20000], None)]
    for headers, code in cases:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            try:
                sock.sendall(head(twilio_gw.path, port, *headers, "Content-Length: 0"))
            except OSError:
                pass                     # closed while the head was still being sent
            response, closed = read_all(sock)
        assert status_of(response) == code and closed, response[:100]
    code, _ = http_get(f"http://127.0.0.1:{port}/healthz")
    assert code == 200


# -- signatures ----------------------------------------------------------------

def test_forged_twilio_webhooks_are_refused_and_replays_deliver_once(hostile_prosody, twilio_gw):
    number = new_number()

    async def scenario():
        client = await registered_client(hostile_prosody, "hhook.localhost", "hookforge", Client,
                                         {"number": number})
        try:
            forged = inbound_params(CONTACT, number, "forged")
            other_url = f"http://127.0.0.1:{twilio_gw.web_port}/hooks/hhook.localhost/twilio/status"
            cases = [twilio_post(twilio_gw, forged, signature=None),
                     twilio_post(twilio_gw, forged, signature=base64.b64encode(b"x" * 20).decode()),
                     twilio_post(twilio_gw, forged, signature=twilio_signature("not-the-token",
                                 f"http://127.0.0.1:{twilio_gw.web_port}{twilio_gw.path}", forged)),
                     # signed for another URL (a status callback's signature moved to inbound)
                     twilio_post(twilio_gw, forged, signature=twilio_signature(AUTH_TOKEN, other_url, forged))]
            assert [code for code, _ in cases] == [403] * 4
            # A captured, validly signed request sent again: Twilio signs no time, so the
            # MessageSid is what makes a replay harmless.
            signed = inbound_params(CONTACT, number, "said once")
            for _ in range(3):
                code, answer = await asyncio.to_thread(twilio_post, twilio_gw, signed)
                assert code == 200 and b"<Response>" in answer
            got = await client.quiet(seconds=2.0, predicate=lambda m: body(m) is not None)
            assert [body(m) for m in got] == ["said once"]
        finally:
            await client.stop()

    run(scenario())


def telnyx_event(sender: str, to: str, text: str, message_id: str | None = None) -> bytes:
    return json.dumps({"data": {"event_type": "message.received", "id": secrets.token_hex(8), "payload": {
        "id": message_id or secrets.token_hex(8), "from": {"phone_number": sender},
        "to": [{"phone_number": to}], "text": text}}}).encode()


def telnyx_post(gw, key, data: bytes, stamp: int | None = None, forge: bool = False) -> int:
    stamp = int(time.time()) if stamp is None else stamp
    signer = Ed25519PrivateKey.generate() if forge else key
    sig = base64.b64encode(signer.sign(str(stamp).encode() + b"|" + data)).decode()
    code, _ = post(gw.web_port, gw.path, data, {"Content-Type": "application/json",
                                                "telnyx-signature-ed25519": sig, "telnyx-timestamp": str(stamp)})
    return code


def test_forged_and_replayed_telnyx_webhooks(hostile_prosody, telnyx_gw, telnyx_key):
    number = new_number()

    async def scenario():
        client = await registered_client(hostile_prosody, "hhook2.localhost", "hooktel", Client,
                                         {"number": number})
        try:
            assert await asyncio.to_thread(telnyx_post, telnyx_gw, telnyx_key,
                                           telnyx_event(CONTACT, number, "forged"), forge=True) == 403
            # A captured event replayed after the tolerance: its signed timestamp is too old.
            old = int(time.time()) - 3600
            assert await asyncio.to_thread(telnyx_post, telnyx_gw, telnyx_key,
                                           telnyx_event(CONTACT, number, "stale"), old) == 403
            # A timestamp from the future is no better.
            assert await asyncio.to_thread(telnyx_post, telnyx_gw, telnyx_key,
                                           telnyx_event(CONTACT, number, "future"), int(time.time()) + 3600) == 403
            # Replayed within the tolerance: the same message id, delivered once.
            event = telnyx_event(CONTACT, number, "telnyx once")
            stamp = int(time.time())
            for _ in range(3):
                assert await asyncio.to_thread(telnyx_post, telnyx_gw, telnyx_key, event, stamp) == 200
            got = await client.quiet(seconds=2.0, predicate=lambda m: body(m) is not None)
            assert [body(m) for m in got] == ["telnyx once"]
        finally:
            await client.stop()

    run(scenario())


# -- senders no JID can name ------------------------------------------------------

@pytest.mark.parametrize("sender", ["ACME\u00a0BANK", "tab\tsender", "\u200eLRM", "IDEO\u3000GRAPHIC",
                                    "priv\ue000ate"])
def test_a_sender_no_jid_can_carry_loses_nothing(hostile_prosody, twilio_gw, sender):
    """
    An alphanumeric sender id with characters nodeprep forbids: escaped as is it would be a JID the
    XMPP server bounces (after the gateway deleted the message). It arrives from the gateway's own
    address, naming the sender, and the next message is not lost either.
    """
    number = new_number()

    async def scenario():
        client = await registered_client(hostile_prosody, "hhook.localhost", "hookjid", Client, {"number": number})
        try:
            for params in (inbound_params(sender, number, "from a strange sender"),
                           inbound_params(CONTACT, number, "the next one")):
                code, _ = await asyncio.to_thread(twilio_post, twilio_gw, params)
                assert code == 200
            first = await client.next_message(lambda m: body(m) is not None)
            second = await client.next_message(lambda m: body(m) is not None)
            assert first.get("from") == "hhook.localhost" and first.get("type") != "error"
            assert "from a strange sender" in body(first) and "\u00a0" not in (first.get("from") or "")
            assert second.get("from") == f"{CONTACT}@hhook.localhost" and body(second) == "the next one"
        finally:
            await client.stop()

    run(scenario())
