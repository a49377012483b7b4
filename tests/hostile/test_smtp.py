"""
A hostile SMTP client against the real gateway process's SMTP listener (raw
sockets and smtplib), real Prosody users on the other side, aiosmtpd as the
smarthost for the users' own mail (forged bounces need a real sent message).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import select
import smtplib
import socket
import time

import pytest

from gateway.testing.certs import self_signed
from gateway.testing.process import free_port
from tests.hostile.conftest import start_gateway
from tests.integration.gateway_fixture import register_form
from tests.integration.harness import Client, body, error_condition, run
from tests.integration.mail_support import SMARTHOST_PASSWORD, SMARTHOST_USER, Smarthost

MAIL_DOMAIN = "mail.hostile.test"
BOB = "bob@example.net"


@pytest.fixture(scope="module")
def certs(workdir):
    return self_signed(os.path.join(workdir, "hsmtp-certs"), ("localhost", "smarthost.test"))


@pytest.fixture(scope="module")
def smarthost(certs):
    host = Smarthost(free_port(), *certs).start()
    yield host
    host.stop()


def options(smtp_port, smarthost_port, certs, **extra):
    cert, key = certs
    return {"mail_domain": MAIL_DOMAIN, "smarthost_host": "localhost", "smarthost_port": smarthost_port,
            "smarthost_tls": "required", "smarthost_ca": cert, "smarthost_username": SMARTHOST_USER,
            "smarthost_password": SMARTHOST_PASSWORD, "smtp_listen": f"tcp:{smtp_port}:interface=127.0.0.1",
            "max_size": 100_000, "max_recipients": 3, "max_messages_per_minute": 1000,
            "max_connections_per_ip": 50, "daily_limit": 2, **extra}


@pytest.fixture(scope="module")
def gateway(hostile_prosody, smarthost, certs, workdir):
    path = os.path.join(workdir, "hsmtp")
    os.makedirs(path, exist_ok=True)
    port = free_port()
    gw = start_gateway(hostile_prosody, path, "hsmtp", adapter="email",
                       options=options(port, smarthost.controller.port, certs),
                       outbox={"retry_initial": 0.3, "retry_max": 0.5, "deadline": 30.0})
    gw.smtp_port = port
    yield gw
    gw.stop()


_n = iter(range(1000))


async def mail_user(prosody, gw, name):
    """A registered user whose address is ``name``@MAIL_DOMAIN."""
    alias = f"{name}{next(_n)}"
    client = await Client(prosody.register(f"{alias}{os.getpid()}", "pw"), "pw").start(prosody.c2s_port)
    await client.iq(gw.domain, "set", register_form({"alias": alias}))
    client.address = f"{alias}@{MAIL_DOMAIN}"
    return client


def smtp(gw) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", gw.smtp_port, "client.example.net", timeout=30)


class Raw:
    """A raw SMTP client: the bytes as written, every reply read."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return 0, "closed"
            lines.append(line.decode("ascii", "replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: str) -> tuple[int, str]:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def dsn(to: str, original: str, diagnostic: str) -> bytes:
    return (f"From: MAILER-DAEMON@example.net\r\nTo: {to}\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=R\r\n\r\n"
            "--R\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
            "--R\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
            f"Final-Recipient: rfc822; {BOB}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            f"Diagnostic-Code: smtp; {diagnostic}\r\n\r\n"
            f"--R\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {original}\r\n\r\n--R--\r\n").encode()


def test_a_forged_bounce_for_another_users_message_changes_nothing(hostile_prosody, gateway, smarthost):
    """Mallory mails a DSN naming Alice's Message-ID to his own address: Alice's message is not failed."""
    async def scenario():
        alice = await mail_user(hostile_prosody, gateway, "alice")
        mallory = await mail_user(hostile_prosody, gateway, "mallory")
        try:
            msg_id = alice.send_chat(f"bob\\40example.net@{gateway.domain}", "a mail to bob")
            got = await asyncio.to_thread(smarthost.wait, lambda m: b"a mail to bob" in m["data"])
            original = email.message_from_bytes(got[0]["data"], policy=email.policy.default)["Message-ID"]

            def send(to, text):
                with smtp(gateway) as s:
                    return s.sendmail("", [to], dsn(to, original, text))

            assert await asyncio.to_thread(send, mallory.address, "550 forged by mallory") == {}
            forged = await alice.quiet(seconds=4.0, predicate=lambda m: m.get("type") == "error")
            assert forged == [], "a forged bounce failed another user's message"
            # The same bounce mailed to Alice is hers: her message fails, with the diagnostic.
            assert await asyncio.to_thread(send, alice.address, "550 5.1.1 no such user") == {}
            err = await alice.next_message(lambda m: m.get("id") == msg_id and m.get("type") == "error")
            assert error_condition(err)[0] == "recipient-unavailable"
            assert "no such user" in error_condition(err)[1]
        finally:
            await alice.stop()
            await mallory.stop()

    run(scenario(), timeout=90)


def test_recipients_are_capped_and_refusals_end_the_connection(hostile_prosody, gateway):
    """1,000 RCPTs: at most max_recipients (3) distinct ones count, the rest 452; 20 refused RCPTs close."""
    async def scenario():
        users = [await mail_user(hostile_prosody, gateway, f"rc{i}") for i in range(4)]
        try:
            def attack():
                codes = []
                with smtp(gateway) as s:
                    s.ehlo()
                    s.mail(BOB)
                    for i in range(1000):
                        codes.append(s.rcpt(users[i % 4].address)[0])
                    code, _ = s.data(f"From: {BOB}\r\nSubject: many\r\n\r\nto many\r\n".encode())
                return codes, code

            codes, data_code = await asyncio.to_thread(attack)
            assert codes[:3] == [250, 250, 250] and codes[3] == 452
            assert set(codes[4:]) == {250, 452}           # repeats of the three count once; the fourth never
            assert codes.count(452) == 250 and data_code == 250
            for u in users[:3]:
                got = await u.quiet(seconds=3.0, predicate=lambda m: body(m) == "to many")
                assert len(got) == 1
            assert await users[3].quiet(seconds=0.5, predicate=lambda m: body(m) == "to many") == []

            def unknown():
                raw = Raw(gateway.smtp_port)
                raw.cmd("EHLO client.example.net")
                replies = []
                for i in range(20):                    # RSET each time: the recipient cap is per transaction
                    raw.cmd("RSET")
                    raw.cmd(f"MAIL FROM:<{BOB}>")
                    replies.append(raw.cmd(f"RCPT TO:<nobody{i}@{MAIL_DOMAIN}>")[0])
                after = raw.reply()
                raw.close()
                return replies, after

            replies, after = await asyncio.to_thread(unknown)
            assert replies[:19] == [550] * 19 and replies[19] == 550
            assert after[0] == 421 or after == (0, "closed")
        finally:
            for u in users:
                await u.stop()

    run(scenario(), timeout=120)


def test_smuggling_with_bare_line_feeds_gives_one_message(hostile_prosody, gateway):
    """
    ``\\n.\\n`` and ``\\r\\n.\\n`` inside DATA are content: no second message with a
    forged sender, one message delivered. A long mail with bare LF line ends is
    taken (normalised), not dropped for a "line" over the limit.
    """
    async def scenario():
        carol = await mail_user(hostile_prosody, gateway, "carol")
        try:
            def smuggle():
                raw = Raw(gateway.smtp_port)
                raw.cmd("EHLO client.example.net")
                assert raw.cmd(f"MAIL FROM:<{BOB}>")[0] == 250
                assert raw.cmd(f"RCPT TO:<{carol.address}>")[0] == 250
                assert raw.cmd("DATA")[0] == 354
                raw.send(f"From: {BOB}\r\nSubject: smuggle\r\n\r\nfirst part\r\n".encode()
                         + b"\n.\nMAIL FROM:<ceo@bank.example>\nRCPT TO:<" + carol.address.encode() + b">\nDATA\n"
                         + b"From: ceo@bank.example\nSubject: smuggled\n\nsmuggled body one\n"
                         + b"\r\n.\nMAIL FROM:<ceo@bank.example>\r\nRCPT TO:<" + carol.address.encode()
                         + b">\r\nDATA\r\nFrom: ceo@bank.example\r\n\r\nsmuggled body two\r\n"
                         + b"\r\n.\r\n")
                first = raw.reply()
                raw.send(b"QUIT\r\n")
                rest = [raw.reply()]
                raw.close()
                return first, rest

            first, rest = await asyncio.to_thread(smuggle)
            assert first[0] == 250, first
            assert rest[0][0] == 221, rest                        # the next reply is QUIT's: nothing was smuggled
            got = await carol.quiet(seconds=4.0, predicate=lambda m: body(m) is not None)
            assert len(got) == 1
            assert "first part" in body(got[0]) and "smuggled body two" in body(got[0])
            assert "ceo@bank.example" not in (got[0].get("from") or "")

            lf_mail = (f"From: {BOB}\nSubject: bare lf\n\n" + "a line ending in a bare LF\n" * 2000).encode()

            def bare():
                with smtp(gateway) as s:
                    s.ehlo()
                    s.mail(BOB)
                    s.rcpt(carol.address)
                    s.send(b"DATA\r\n")
                    assert s.getreply()[0] == 354
                    s.send(lf_mail + b"\r\n.\r\n")
                    return s.getreply()

            assert (await asyncio.to_thread(bare))[0] == 250
            m = await carol.next_message(lambda m: (body(m) or "").startswith("a line ending"), timeout=20)
            assert body(m).count("a line ending in a bare LF") == 2000
        finally:
            await carol.stop()

    run(scenario(), timeout=90)


def test_sizes_over_the_limit_are_refused_and_the_connection_goes_on(hostile_prosody, gateway):
    async def scenario():
        dan = await mail_user(hostile_prosody, gateway, "dan")
        try:
            def attack():
                raw = Raw(gateway.smtp_port)
                raw.cmd("EHLO client.example.net")
                too_big = raw.cmd(f"MAIL FROM:<{BOB}> SIZE=999999999")
                raw.cmd("RSET")
                assert raw.cmd(f"MAIL FROM:<{BOB}>")[0] == 250
                assert raw.cmd(f"RCPT TO:<{dan.address}>")[0] == 250
                assert raw.cmd("DATA")[0] == 354
                raw.send(b"Subject: huge\r\n\r\n" + (b"x" * 998 + b"\r\n") * 200 + b".\r\n")   # 200 kB > 100 kB
                data_over = raw.reply()
                # The same connection still carries an ordinary mail.
                assert raw.cmd(f"MAIL FROM:<{BOB}>")[0] == 250
                assert raw.cmd(f"RCPT TO:<{dan.address}>")[0] == 250
                assert raw.cmd("DATA")[0] == 354
                raw.send(b"Subject: fine\r\n\r\nafter the huge one\r\n.\r\n")
                fine = raw.reply()
                raw.close()
                return too_big, data_over, fine

            too_big, data_over, fine = await asyncio.to_thread(attack)
            assert too_big[0] == 552 and "5.3.4" in too_big[1]
            assert data_over[0] == 552
            assert fine[0] == 250
            got = await dan.quiet(seconds=3.0, predicate=lambda m: body(m) is not None)
            assert [body(m) for m in got] == ["after the huge one"]
        finally:
            await dan.stop()

    run(scenario(), timeout=60)


def test_a_line_over_16_kib_is_refused_and_the_connection_closed(hostile_prosody, gateway):
    """
    A command line of 17 KiB, a DATA line of 17 KiB, and 1 MiB with no newline
    at all: ``500 5.5.2`` and the connection closed each time (a line is never
    buffered past 16 KiB); nothing of the cut mail is delivered, and the next
    connection delivers an ordinary mail.
    """
    async def scenario():
        fay = await mail_user(hostile_prosody, gateway, "fay")
        try:
            def attack():
                replies = []
                raw = Raw(gateway.smtp_port)
                raw.cmd("EHLO client.example.net")
                replies.append(raw.cmd(f"MAIL FROM:<{'a' * 17 * 1024}@example.net>"))
                replies.append(raw.reply())
                raw.close()
                raw = Raw(gateway.smtp_port)
                raw.cmd("EHLO client.example.net")
                assert raw.cmd(f"MAIL FROM:<{BOB}>")[0] == 250
                assert raw.cmd(f"RCPT TO:<{fay.address}>")[0] == 250
                assert raw.cmd("DATA")[0] == 354
                raw.send(b"Subject: long line\r\n\r\nbefore\r\n" + b"y" * (17 * 1024) + b"\r\nafter\r\n.\r\n")
                replies.append(raw.reply())
                replies.append(raw.reply())
                raw.close()
                raw = Raw(gateway.smtp_port)
                raw.send(b"EHLO " + b"z" * (1024 * 1024))
                replies.append(raw.reply())
                replies.append(raw.reply())
                raw.close()
                with smtp(gateway) as s:
                    s.sendmail(BOB, [fay.address], b"Subject: fine\r\n\r\nafter the long lines\r\n")
                return replies

            replies = await asyncio.to_thread(attack)
            for i in (0, 2, 4):
                assert replies[i][0] == 500 and "5.5.2" in replies[i][1], replies
                assert replies[i + 1] == (0, "closed"), replies
            got = await fay.quiet(seconds=3.0, predicate=lambda m: body(m) is not None)
            assert [body(m) for m in got] == ["after the long lines"]
        finally:
            await fay.stop()

    run(scenario(), timeout=60)


def test_outbound_mail_has_a_daily_cap(hostile_prosody, gateway, smarthost):
    async def scenario():
        erin = await mail_user(hostile_prosody, gateway, "erin")
        try:
            ids = [erin.send_chat(f"bob\\40example.net@{gateway.domain}", f"capped {i}") for i in range(3)]
            err = await erin.next_message(lambda m: m.get("id") == ids[2] and m.get("type") == "error", timeout=30)
            cond, text = error_condition(err)
            assert cond == "policy-violation" and "daily limit of 2" in text
            sent = await asyncio.to_thread(smarthost.wait, lambda m: b"capped " in m["data"]
                                           and erin.address.encode() in m["data"])
            time.sleep(1.0)
            sent = [m for m in smarthost.received if b"capped " in m["data"] and erin.address.encode() in m["data"]]
            assert len(sent) == 2
        finally:
            await erin.stop()

    run(scenario(), timeout=60)


def test_per_ip_limits_and_the_data_deadline(hostile_prosody, smarthost, certs, fresh_dir):
    """A second gateway with tight limits: connections per IP, transactions per minute, a slow DATA."""
    port = free_port()
    gw = start_gateway(hostile_prosody, fresh_dir, "hsmtp2", adapter="email",
                       options=options(port, smarthost.controller.port, certs, max_connections_per_ip=3,
                                       max_messages_per_minute=4, data_timeout=2.0))
    gw.smtp_port = port

    async def scenario():
        fay = await mail_user(hostile_prosody, gw, "fay")
        try:
            def connections():
                held = [Raw(port) for _ in range(3)]
                extra = Raw(port)
                refused = extra.greeting
                extra.close()
                for r in held:
                    r.close()
                return [r.greeting[0] for r in held], refused

            greetings, refused = await asyncio.to_thread(connections)
            assert greetings == [220, 220, 220] and refused[0] == 421 and "4.7.0" in refused[1]

            def slow():
                raw = Raw(port)
                raw.cmd("EHLO client.example.net")
                raw.cmd(f"MAIL FROM:<{BOB}>")
                raw.cmd(f"RCPT TO:<{fay.address}>")
                raw.cmd("DATA")
                start = time.monotonic()
                raw.send(b"Subject: slow\r\n\r\n")
                answer = (0, "")
                for _ in range(100):                          # a line every 0.2 s, never the end
                    try:
                        raw.send(b"slow line\r\n")
                    except OSError:
                        break
                    if select.select([raw.sock], [], [], 0.2)[0]:
                        answer = raw.reply()
                        break
                raw.close()
                return answer, time.monotonic() - start

            answer, took = await asyncio.to_thread(slow)
            assert answer[0] == 421 and "4.4.2" in answer[1], answer
            assert took < 15

            def per_minute():
                raw = Raw(port)
                raw.cmd("EHLO client.example.net")
                codes = []
                for _ in range(5):
                    codes.append(raw.cmd(f"MAIL FROM:<{BOB}>")[0])
                    raw.cmd("RSET")
                raw.close()
                return codes

            codes = await asyncio.to_thread(per_minute)
            # The slow DATA used one of the four; three more pass, then 451.
            assert codes == [250, 250, 250, 451, 451], codes
            assert await fay.quiet(seconds=1.0, predicate=lambda m: body(m) is not None) == []
        finally:
            await fay.stop()

    try:
        run(scenario(), timeout=90)
    finally:
        gw.stop()
