"""
Spoofed senders against the real gateway process: a DNS server of the test
publishes SPF, DKIM and DMARC records (gateway/testing/dns.py), swaks-like raw
SMTP from 127.0.0.1 (not trusted in this gateway's config) sends mail claiming
those domains. DMARC p=reject failure → 550 and nothing stored; p=none failure
→ delivered with a marker the user sees; a correctly DKIM-signed mail →
delivered without one; a domain with no records → delivered as it is.
"""

from __future__ import annotations

import asyncio
import base64
import os
import smtplib
import sys

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.testing.process import Server, free_port
from tests.hostile.conftest import start_gateway
from tests.integration.gateway_fixture import register_form
from tests.integration.harness import Client, body, run

MAIL_DOMAIN = "mail.auth.test"


@pytest.fixture(scope="module")
def dkim_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(public).decode()


@pytest.fixture(scope="module")
def dns_server(workdir, dkim_key):
    port = free_port()
    records = {
        "reject.example": "v=spf1 ip4:192.0.2.1 -all", "_dmarc.reject.example": "v=DMARC1; p=reject",
        "none.example": "v=spf1 ip4:192.0.2.1 -all", "_dmarc.none.example": "v=DMARC1; p=none",
        "signed.example": "v=spf1 ip4:192.0.2.1 -all", "_dmarc.signed.example": "v=DMARC1; p=reject",
        "sel._domainkey.signed.example": f"v=DKIM1; k=rsa; p={dkim_key[1]}",
    }
    args = [sys.executable, "-m", "gateway.testing.dns", "--port", str(port)]
    for name, value in records.items():
        args += ["--txt", f"{name}={value}"]
    server = Server("dns", args, os.path.join(workdir, "auth-dns.log")).start()
    server.wait_log("dns listening")
    server.port = port
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(hostile_prosody, dns_server, workdir):
    path = os.path.join(workdir, "hsmtp3")
    os.makedirs(path, exist_ok=True)
    port = free_port()
    gw = start_gateway(hostile_prosody, path, "hsmtp3", adapter="email", options={
        "mail_domain": MAIL_DOMAIN, "smtp_listen": f"tcp:{port}:interface=127.0.0.1",
        "dns_servers": [f"127.0.0.1:{dns_server.port}"], "sender_auth": "enforce", "trusted_networks": []})
    gw.smtp_port = port
    yield gw
    gw.stop()


def send(port: int, sender: str, to: str, data: bytes):
    with smtplib.SMTP("127.0.0.1", port, "client.example.net", timeout=60) as s:
        try:
            return s.sendmail(sender, [to], data)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error.decode()


def mail(sender: str, subject: str, text: str) -> bytes:
    return (f"From: {sender}\r\nTo: you@{MAIL_DOMAIN}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@x>\r\n\r\n{text}\r\n").encode()


def test_spoofed_senders_are_refused_or_marked_and_signed_mail_passes(hostile_prosody, gateway, dkim_key):
    async def scenario():
        user = hostile_prosody.register(f"authuser{os.getpid()}", "pw")
        client = await Client(user, "pw").start(hostile_prosody.c2s_port)
        try:
            await client.iq(gateway.domain, "set", register_form({"alias": "victim"}))
            to = f"victim@{MAIL_DOMAIN}"
            port = gateway.smtp_port
            refused = await asyncio.to_thread(send, port, "ceo@reject.example", to,
                                              mail("ceo@reject.example", "wire money", "spoofed, p=reject"))
            assert refused[0] == 550 and "DMARC" in refused[1], refused
            marked = await asyncio.to_thread(send, port, "ceo@none.example", to,
                                             mail("ceo@none.example", "p none", "spoofed, p=none"))
            assert marked == {}
            m = await client.next_message(lambda m: "spoofed, p=none" in (body(m) or ""), timeout=30)
            assert body(m).startswith("[unverified sender: none.example failed DMARC")
            signed = dkim.sign(mail("news@signed.example", "signed", "signed and aligned"), b"sel",
                               b"signed.example", dkim_key[0], include_headers=[b"from", b"subject", b"message-id"])
            assert await asyncio.to_thread(send, port, "bounce@elsewhere.example", to,
                                           signed + mail("news@signed.example", "signed", "signed and aligned")) == {}
            m = await client.next_message(lambda m: "signed and aligned" in (body(m) or ""), timeout=30)
            assert not body(m).startswith("[unverified")
            plain = await asyncio.to_thread(send, port, "someone@nodns.example", to,
                                            mail("someone@nodns.example", "no records", "no records at all"))
            assert plain == {}
            m = await client.next_message(lambda m: "no records at all" in (body(m) or ""), timeout=30)
            assert body(m) == "no records at all"
            stray = await client.quiet(seconds=1.0, predicate=lambda m: "p=reject" in (body(m) or ""))
            assert stray == []                                        # the refused one was never stored
        finally:
            await client.stop()

    run(scenario(), timeout=120)
