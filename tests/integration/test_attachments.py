"""
Files both ways, end to end (issue 14): a Prosody of its own with
mod_http_file_share (XEP-0363), slixmpp users who upload with its own
XEP-0363 plugin, the gateway process with the email and SMS adapters, swaks
sending mail in, aiosmtpd as the smarthost and the Twilio simulator.

- A mail's attachment is put on the user's server and fetched from there by
  the client (bytes compared); one larger than the server takes is served
  from the gateway's /files/ instead.
- A file the user uploaded and sent (XEP-0066, or a body that is only the
  upload URL) reaches the smarthost as a MIME part and the simulator as MMS
  media (bytes compared); inbound MMS media are put on the user's server.
- Refused: a loopback URL when fetch_allow_private is off (the user's own
  upload service on loopback is still fetched from: the operator's server),
  a file larger than fetch_max_size (the sender gets the stanza error).
"""

import asyncio
import base64
import email
import email.policy
import io
import os
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gateway.testing.certs import self_signed
from gateway.testing.process import free_port
from gateway.testing.prosody import Prosody
from tests.integration.gateway_fixture import register_form, start_gateway
from tests.integration.harness import Client, body, error_condition, run
from tests.integration.mail_support import SMARTHOST_PASSWORD, SMARTHOST_USER, Smarthost, swaks
from tests.integration.sms_support import TwilioSimulator, sms_options

MAIL_DOMAIN = "att.example.org"
BOB = "bob@example.net"
#: Prosody's http_file_share_size_limit here: files up to this go to the user's server.
SERVER_LIMIT = 60_000
#: The gateways' attachments.fetch_max_size: smaller than what the server takes, so a
#: file the user can upload may still be too large for the gateway to fetch.
FETCH_LIMIT = 30_000
#: This module's own component domains (its own Prosody, so not in conftest's NAMES).
COMPONENTS = {f"{n}.localhost": f"{n}-component-secret" for n in ("attmail", "attsms")}
NS_OOB = "{jabber:x:oob}"


class UploadProsody(Prosody):
    """The test Prosody plus an HTTP listener and mod_http_file_share as upload.localhost."""

    def __init__(self, workdir: str, components: dict[str, str]):
        self.http_port = free_port()
        super().__init__(workdir, components)

    def _write_config(self) -> None:
        super()._write_config()
        with open(self.config_path, encoding="utf-8") as f:
            text = f.read()
        head, sep, rest = text.partition('VirtualHost "')
        glob = (f"http_ports = {{ {self.http_port} }}\nhttp_interfaces = {{ \"127.0.0.1\" }}\n"
                "https_ports = { }\nhttps_interfaces = { }\n\n")
        upload = (f'\nComponent "upload.localhost" "http_file_share"\n  http_host = "127.0.0.1"\n'
                  f'  http_external_url = "http://127.0.0.1:{self.http_port}/"\n'
                  f"  http_file_share_size_limit = {SERVER_LIMIT}\n")
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(head + glob + sep + rest + upload)

    def start(self) -> "UploadProsody":
        super().start()
        self.server.wait_log(f"Activated service 'http' on [127.0.0.1]:{self.http_port}")
        return self


@pytest.fixture(scope="module")
def upload_server(workdir):
    server = UploadProsody(os.path.join(workdir, "prosody-upload"), COMPONENTS).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def certs(workdir):
    return self_signed(os.path.join(workdir, "att-certs"), ("localhost", "smarthost.test"))


@pytest.fixture(scope="module")
def smarthost(certs):
    host = Smarthost(free_port(), *certs).start()
    yield host
    host.stop()


def mail_options(smtp_port, smarthost_port, certs):
    cert, key = certs
    return {"mail_domain": MAIL_DOMAIN, "smarthost_host": "localhost", "smarthost_port": smarthost_port,
            "smarthost_tls": "required", "smarthost_ca": cert, "smarthost_username": SMARTHOST_USER,
            "smarthost_password": SMARTHOST_PASSWORD, "smtp_listen": f"tcp:{smtp_port}:interface=127.0.0.1",
            "tls_cert": cert, "tls_key": key, "max_size": 400_000}


def attachments(allow_private: bool) -> dict:
    return {"attachments": {"fetch_allow_private": allow_private, "fetch_max_size": FETCH_LIMIT,
                            "fetch_timeout": 20.0}}


def mail_gateway(server, smarthost, certs, workdir, name, allow_private):
    path = os.path.join(workdir, f"{name}-gw")
    os.makedirs(path, exist_ok=True)
    smtp_port = free_port()
    gateway = start_gateway(server, path, name, adapter="email", web=True, secret=COMPONENTS[f"{name}.localhost"],
                            options=mail_options(smtp_port, smarthost.controller.port, certs),
                            outbox={"retry_initial": 0.3, "retry_max": 0.5, "deadline": 30.0},
                            sections=attachments(allow_private))
    gateway.smtp_port = smtp_port
    return gateway


@pytest.fixture(scope="module")
def mailgw(upload_server, smarthost, certs, workdir):
    # fetch_allow_private off: the user's own upload service (on loopback here) is still fetched
    # from, being the operator's server; any other loopback URL is refused.
    gateway = mail_gateway(upload_server, smarthost, certs, workdir, "attmail", False)
    yield gateway
    gateway.stop()


class UploadClient(Client):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        self.register_plugin("xep_0363")

    async def upload(self, name: str, data: bytes, content_type: str) -> str:
        return await self.plugin["xep_0363"].upload_file(name, size=len(data), content_type=content_type,
                                                         input_file=io.BytesIO(data), domain="localhost",
                                                         timeout=10)


async def mail_user(server, domain, name):
    client = await UploadClient(server.register(f"{name}{os.getpid()}", "pw"), "pw").start(server.c2s_port)
    await client.iq(domain, "set", register_form({"alias": name, "name": name.title()}))
    return client


def fetch(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read(), r.headers.get("Content-Type", "")


def mixed_mail(path, to, name: str, data: bytes, ctype: str) -> str:
    payload = (b"--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--XX\r\n"
               + f"Content-Type: {ctype}\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n".encode()
               + b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(data).replace(b"\n", b"\r\n")
               + b"--XX--\r\n")
    head = (f"From: {BOB}\r\nTo: {to}\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=XX\r\n\r\n").encode()
    with open(path, "wb") as f:
        f.write(head + payload)
    return "@" + path


def oob(url: str) -> str:
    return f"<x xmlns='jabber:x:oob'><url>{url}</url></x>"


def test_mail_attachment_is_uploaded_to_the_users_server(upload_server, mailgw, fresh_dir):
    domain = mailgw.domain
    upload_base = f"http://127.0.0.1:{upload_server.http_port}/file_share/"

    async def scenario():
        client = await mail_user(upload_server, domain, "ann")
        to = f"ann@{MAIL_DOMAIN}"
        try:
            picture = b"\x89PNG\r\n\x1a\n" + os.urandom(20_000)
            mail = mixed_mail(os.path.join(fresh_dir, "pic.eml"), to, "holiday.png", picture, "image/png")
            r = await asyncio.to_thread(swaks, mailgw.smtp_port, "--from", BOB, "--to", to, "--data", mail)
            assert r.returncode == 0, r.stdout + r.stderr
            msg = await client.next_message(lambda m: body(m) is not None, timeout=30)
            url = msg.find(f"{NS_OOB}x/{NS_OOB}url").text
            assert url.startswith(upload_base) and url.endswith("/holiday.png"), url
            assert body(msg) == f"see attached\n{url}"
            data, ctype = await asyncio.to_thread(fetch, url)
            assert data == picture and ctype == "image/png"

            # Larger than the server takes: served by the gateway's own /files/ as before.
            big = os.urandom(SERVER_LIMIT + 10_000)
            mail = mixed_mail(os.path.join(fresh_dir, "big.eml"), to, "big.bin", big, "application/octet-stream")
            r = await asyncio.to_thread(swaks, mailgw.smtp_port, "--from", BOB, "--to", to, "--data", mail)
            assert r.returncode == 0, r.stdout + r.stderr
            msg = await client.next_message(lambda m: body(m) is not None, timeout=30)
            url = msg.find(f"{NS_OOB}x/{NS_OOB}url").text
            assert url.startswith(f"http://127.0.0.1:{mailgw.web_port}/files/"), url
            assert (await asyncio.to_thread(fetch, url))[0] == big
        finally:
            await client.stop()

    run(scenario())


def attachment_parts(data: bytes) -> list:
    mail = email.message_from_bytes(data, policy=email.policy.default)
    return [p for p in mail.iter_attachments()], mail


def test_file_sent_by_the_user_becomes_a_mime_part(upload_server, mailgw, smarthost):
    domain = mailgw.domain
    bob = f"bob\\40example.net@{domain}"

    async def scenario():
        client = await mail_user(upload_server, domain, "ben")
        try:
            report = b"%PDF-1.4\n" + os.urandom(12_000)
            url = await client.upload("q3 report.pdf", report, "application/pdf")
            client.send_chat(bob, url, extra=oob(url))
            got = await asyncio.to_thread(smarthost.wait, lambda m: b"q3 report.pdf" in m["data"] or
                                          b"q3%20report.pdf" in m["data"], 30)
            assert got, "no mail with the file reached the smarthost"
            parts, mail = attachment_parts(got[0]["data"])
            assert len(parts) == 1 and parts[0].get_content() == report
            assert parts[0].get_content_type() == "application/pdf"
            assert parts[0].get_filename() == "q3 report.pdf"
            assert url not in mail.get_body(("plain",)).get_content()      # a file now, not a link

            # A body that is only the URL of an upload (no XEP-0066 element) is a file too.
            notes = os.urandom(5_000)
            url = await client.upload("notes.bin", notes, "application/octet-stream")
            client.send_chat(bob, url)
            got = await asyncio.to_thread(smarthost.wait, lambda m: b"notes.bin" in m["data"], 30)
            assert got, "no mail with the second file reached the smarthost"
            parts, _ = attachment_parts(got[0]["data"])
            assert [p.get_content() for p in parts] == [notes]
        finally:
            await client.stop()

    run(scenario())


def test_loopback_and_oversize_files_are_refused(upload_server, mailgw, smarthost):
    async def scenario():
        client = await mail_user(upload_server, mailgw.domain, "dan")
        to = f"bob\\40example.net@{mailgw.domain}"
        try:
            # The gateway's own metrics, by a name that resolves to loopback: not fetched.
            url = f"http://localhost:{mailgw.web_port}/metrics"
            mid = client.send_chat(to, "the metrics", extra=oob(url))
            err = await client.next_message(lambda m: m.get("type") == "error" and m.get("id") == mid, timeout=30)
            condition, text = error_condition(err)
            assert condition == "not-allowed", (condition, text)
            assert "localhost" in text and "fetch_allow_private" in text

            big = os.urandom(FETCH_LIMIT + 5_000)        # the server takes it; the gateway will not fetch it
            url = await client.upload("big.bin", big, "application/octet-stream")
            mid = client.send_chat(to, "the big one", extra=oob(url))
            err = await client.next_message(lambda m: m.get("type") == "error" and m.get("id") == mid, timeout=30)
            condition, text = error_condition(err)
            assert condition == "policy-violation", (condition, text)
            assert str(FETCH_LIMIT) in text

            mid = client.send_chat(to, "eleven files", extra="".join(oob(f"{url}?{i}") for i in range(11)))
            err = await client.next_message(lambda m: m.get("type") == "error" and m.get("id") == mid, timeout=30)
            assert error_condition(err) == ("policy-violation", "at most 10 files go in one mail")
            assert not smarthost.wait(lambda m: any(t in m["data"] for t in (b"the metrics", b"the big one",
                                                                                 b"eleven files")), 1)
        finally:
            await client.stop()

    run(scenario())


CONTACT = "+14155550123"


class MediaHost:
    """An MMS provider's media store: serves fixed bytes over HTTP on loopback."""

    def __init__(self, files: dict[str, tuple[bytes, str]]):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                found = files.get(self.path)
                if found is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", found[1])
                self.send_header("Content-Length", str(len(found[0])))
                self.end_headers()
                self.wfile.write(found[0])

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def smsgw(upload_server, workdir):
    sim = TwilioSimulator(workdir).start()
    path = os.path.join(workdir, "attsms-gw")
    os.makedirs(path, exist_ok=True)
    web_port = free_port()
    gateway = start_gateway(upload_server, path, "attsms", adapter="sms", web_port=web_port,
                            secret=COMPONENTS["attsms.localhost"], options=sms_options(sim, web_port),
                            outbox={"retry_initial": 0.3, "retry_max": 0.5, "deadline": 30.0},
                            sections=attachments(True))
    gateway.hooks = f"http://127.0.0.1:{web_port}/hooks/{gateway.domain}/twilio"
    gateway.simulator = sim
    yield gateway
    gateway.stop()
    sim.stop()


def test_mms_media_both_ways(upload_server, smsgw):
    sim = smsgw.simulator
    number = "+14155550777"
    photo = b"\xff\xd8\xff\xe0" + os.urandom(15_000)
    host = MediaHost({"/media/cat.jpg": (photo, "image/jpeg")})
    upload_base = f"http://127.0.0.1:{upload_server.http_port}/file_share/"

    async def scenario():
        client = await UploadClient(upload_server.register(f"sue{os.getpid()}", "pw"), "pw").start(
            upload_server.c2s_port)
        await client.iq(smsgw.domain, "set", register_form({"number": number}))
        try:
            # Out: the user's upload goes to the provider as MediaUrl, the very file.
            picture = b"GIF89a" + os.urandom(3_000)
            url = await client.upload("wave.gif", picture, "image/gif")
            client.send_chat(f"{CONTACT}@{smsgw.domain}", url, extra=oob(url))
            for _ in range(300):
                sent = [m for m in await asyncio.to_thread(sim.messages) if m["media"]]
                if sent:
                    break
                await asyncio.sleep(0.1)
            assert sent and sent[0]["media"] == [url] and sent[0]["to"] == CONTACT, sent
            assert (await asyncio.to_thread(fetch, sent[0]["media"][0]))[0] == picture

            # In: the provider's media is put on the user's server.
            answer = await asyncio.to_thread(sim.control, "inbound", {
                "url": f"{smsgw.hooks}/inbound", "from": CONTACT, "to": number, "body": "our cat",
                "media": [[f"{host.url}/media/cat.jpg", "image/jpeg"]]})
            assert answer["status"] == 200, answer
            msg = await client.next_message(lambda m: body(m) is not None and m.get("type") != "error", timeout=30)
            url = msg.find(f"{NS_OOB}x/{NS_OOB}url").text
            assert url.startswith(upload_base) and url.endswith("/cat.jpg"), url
            assert body(msg) == f"our cat\n{url}"
            data, ctype = await asyncio.to_thread(fetch, url)
            assert data == photo and ctype == "image/jpeg"

            # Media the gateway cannot fetch (gone at the provider): the provider's URL, as before.
            gone = f"{host.url}/media/gone.jpg"
            answer = await asyncio.to_thread(sim.control, "inbound", {
                "url": f"{smsgw.hooks}/inbound", "from": CONTACT, "to": number, "body": "lost",
                "media": [[gone, "image/jpeg"]]})
            assert answer["status"] == 200, answer
            msg = await client.next_message(lambda m: body(m) is not None and m.get("type") != "error", timeout=30)
            assert body(msg) == f"lost\n{gone}" and msg.find(f"{NS_OOB}x/{NS_OOB}url").text == gone
        finally:
            await client.stop()
            host.stop()

    run(scenario())
