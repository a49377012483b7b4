"""
Email end to end: a real Prosody with slixmpp users, the gateway process with the
email adapter, swaks (a real SMTP client) sending inbound mail to the gateway's
SMTP server, and aiosmtpd as the smarthost with STARTTLS and AUTH required.
"""

import asyncio
import email
import email.policy
import os
import re
import urllib.request

import pytest

from gateway.testing.certs import self_signed
from gateway.testing.process import free_port
from tests.integration.gateway_fixture import register_form, start_gateway
from tests.integration.harness import Client, body, error_condition, run
from tests.integration.mail_support import SMARTHOST_PASSWORD, SMARTHOST_USER, Smarthost, swaks

DOMAIN = "mail.localhost"
MAIL_DOMAIN = "mail.example.org"
BOB = "bob@example.net"
BOB_JID = f"bob\\40example.net@{DOMAIN}"


@pytest.fixture(scope="module")
def certs(workdir):
    return self_signed(os.path.join(workdir, "mail-certs"), ("localhost", "smarthost.test"))


@pytest.fixture(scope="module")
def smarthost(certs):
    host = Smarthost(free_port(), *certs).start()
    yield host
    host.stop()


def mail_options(smtp_port, smarthost_port, certs, **extra):
    cert, key = certs
    return {"mail_domain": MAIL_DOMAIN, "smarthost_host": "localhost", "smarthost_port": smarthost_port,
            "smarthost_tls": "required", "smarthost_ca": cert, "smarthost_username": SMARTHOST_USER,
            "smarthost_password": SMARTHOST_PASSWORD, "smtp_listen": f"tcp:{smtp_port}:interface=127.0.0.1",
            "tls_cert": cert, "tls_key": key, "max_size": 200_000, **extra}


@pytest.fixture(scope="module")
def mail_gateway(prosody, smarthost, certs, workdir):
    path = os.path.join(workdir, "mail-gw")
    os.makedirs(path, exist_ok=True)
    smtp_port = free_port()
    gateway = start_gateway(prosody, path, "mail", adapter="email", web=True,
                            options=mail_options(smtp_port, smarthost.controller.port, certs),
                            outbox={"retry_initial": 0.3, "retry_max": 0.5, "deadline": 30.0})
    gateway.smtp_port = smtp_port
    yield gateway
    gateway.stop()


async def mail_user(prosody, name):
    client = await Client(prosody.register(f"{name}{os.getpid()}", "pw"), "pw").start(prosody.c2s_port)
    await client.iq(DOMAIN, "set", register_form({"alias": name, "name": name.title()}))
    return client


def write_mail(path, headers: dict, payload: bytes) -> str:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
    with open(path, "wb") as f:
        f.write(head + b"\r\n" + payload)
    return "@" + path


def test_inbound_plain_html_latin1_and_attachment(prosody, mail_gateway, fresh_dir):
    async def scenario():
        client = await mail_user(prosody, "ann")
        port = mail_gateway.smtp_port
        to = f"ann@{MAIL_DOMAIN}"
        try:
            r = await asyncio.to_thread(swaks, port, "--tls", "--from", BOB, "--to", to,
                                        "--header", "Subject: plain one", "--body", "just text")
            assert r.returncode == 0, r.stdout + r.stderr
            msg = await client.next_message(lambda m: body(m) is not None)
            assert msg.get("from") == BOB_JID and body(msg) == "just text"
            assert msg.find("{jabber:client}subject").text == "plain one"

            html = write_mail(os.path.join(fresh_dir, "html.eml"), {
                "From": BOB, "To": to, "Subject": "html only", "MIME-Version": "1.0",
                "Content-Type": "text/html; charset=utf-8"},
                b"<html><body><p>Hello <b>Ann</b></p><p>Visit <a href='https://example.net'>us</a></p></body></html>")
            assert (await asyncio.to_thread(swaks, port, "--from", BOB, "--to", to, "--data", html)).returncode == 0
            msg = await client.next_message(lambda m: body(m) is not None)
            assert body(msg) == "Hello Ann\n\nVisit us (https://example.net)"

            latin = write_mail(os.path.join(fresh_dir, "latin.eml"), {
                "From": BOB, "To": to, "Subject": "=?iso-8859-1?q?Gr=FC=DFe?=", "MIME-Version": "1.0",
                "Content-Type": "text/plain; charset=iso-8859-1", "Content-Transfer-Encoding": "8bit"},
                "Schöne Grüße aus Köln".encode("iso-8859-1"))
            assert (await asyncio.to_thread(swaks, port, "--from", BOB, "--to", to, "--data", latin)).returncode == 0
            msg = await client.next_message(lambda m: body(m) is not None)
            assert body(msg) == "Schöne Grüße aus Köln" and msg.find("{jabber:client}subject").text == "Grüße"

            pdf = b"%PDF-1.4\n" + os.urandom(2000)
            import base64
            mixed = write_mail(os.path.join(fresh_dir, "mixed.eml"), {
                "From": BOB, "To": to, "Subject": "report", "MIME-Version": "1.0",
                "Content-Type": "multipart/mixed; boundary=XX"},
                b"--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--XX\r\nContent-Type: application/pdf\r\n"
                b"Content-Disposition: attachment; filename=\"q3 report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                + base64.encodebytes(pdf).replace(b"\n", b"\r\n") + b"--XX--\r\n")
            assert (await asyncio.to_thread(swaks, port, "--from", BOB, "--to", to, "--data", mixed)).returncode == 0
            msg = await client.next_message(lambda m: body(m) is not None)
            url = msg.find("{jabber:x:oob}x/{jabber:x:oob}url").text
            assert body(msg) == f"see attached\n{url}"
            assert re.match(rf"http://127\.0\.0\.1:{mail_gateway.web_port}/files/[\w-]{{30,}}/q3%20report\.pdf$", url)
            with urllib.request.urlopen(url, timeout=5) as r:
                assert r.read() == pdf
                assert r.headers["Content-Type"] == "application/pdf"
            guessed = re.sub(r"/files/[\w-]+/", "/files/" + "A" * 32 + "/", url)
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(guessed, timeout=5)
            assert missing.value.code == 404
        finally:
            await client.stop()

    run(scenario(), timeout=90)


def test_inbound_refusals(prosody, mail_gateway, fresh_dir):
    async def register():
        await (await mail_user(prosody, "gus")).stop()

    run(register())
    port = mail_gateway.smtp_port
    unknown = swaks(port, "--from", BOB, "--to", f"nosuchuser@{MAIL_DOMAIN}", "--body", "hi")
    assert unknown.returncode == 24 and "550 5.1.1" in unknown.stdout
    relay = swaks(port, "--from", BOB, "--to", "victim@elsewhere.example", "--body", "spam")
    assert relay.returncode == 24 and "550 5.7.1" in relay.stdout and "relaying denied" in relay.stdout
    big = swaks(port, "--from", BOB, "--to", f"nosuchuser@{MAIL_DOMAIN}", "--quit-after", "EHLO")
    assert "SIZE 200000" in big.stdout                         # the limit is announced
    with open(os.path.join(fresh_dir, "big.txt"), "w") as f:
        f.write(("x" * 99 + "\n") * 3000)                      # 300 kB > 200 kB
    oversize = swaks(port, "--from", BOB, "--to", f"gus@{MAIL_DOMAIN}", "--body", "@" + f.name)
    assert oversize.returncode == 26 and "552 5.3.4" in oversize.stdout


def test_outbound_headers_threading_and_replies(prosody, smarthost, mail_gateway):
    async def scenario():
        client = await mail_user(prosody, "cat")
        try:
            client.send_chat(BOB_JID, "Dinner at 8?\nBring wine.",
                                      extra="<subject>Plans</subject><thread>dinner-1</thread>")
            got = await asyncio.to_thread(smarthost.wait, lambda m: b"Dinner at 8" in m["data"])
            assert len(got) == 1 and got[0]["tls"] and got[0]["auth"]
            assert got[0]["from"] == f"cat@{MAIL_DOMAIN}" and got[0]["to"] == [BOB]
            mail = email.message_from_bytes(got[0]["data"], policy=email.policy.default)
            assert b"\r\r" not in got[0]["data"]
            assert mail["From"].addresses[0].addr_spec == f"cat@{MAIL_DOMAIN}"
            assert mail["From"].addresses[0].display_name == "Cat"
            assert mail["To"] == BOB and mail["Subject"] == "Plans"
            assert mail["Date"] and mail.get_content_charset() == "utf-8"
            assert mail.get_content().replace("\r\n", "\n") == "Dinner at 8?\nBring wine.\n"
            first_id = mail["Message-ID"]
            assert first_id.endswith(f"@{MAIL_DOMAIN}>")

            # Bob replies by mail: the reply joins the XMPP thread.
            r = await asyncio.to_thread(swaks, mail_gateway.smtp_port, "--from", BOB, "--to", f"cat@{MAIL_DOMAIN}",
                                        "--header", "Subject: Re: Plans", "--header", f"In-Reply-To: {first_id}",
                                        "--header", f"References: {first_id}", "--body", "Sure, red or white?")
            assert r.returncode == 0, r.stdout
            reply = await client.next_message(lambda m: body(m) == "Sure, red or white?")
            assert reply.find("{jabber:client}thread").text == "dinner-1"

            # Cat answers in the thread: In-Reply-To and References follow the whole conversation.
            client.send_chat(BOB_JID, "Red.", extra="<thread>dinner-1</thread>")
            got = await asyncio.to_thread(smarthost.wait, lambda m: b"Red." in m["data"])
            answer = email.message_from_bytes(got[0]["data"], policy=email.policy.default)
            assert answer["Subject"] == "Re: Plans"
            refs = answer["References"].split()
            assert refs[0] == first_id and answer["In-Reply-To"] == refs[-1] and len(refs) == 2

            # Header injection through the subject: one recipient, no extra header.
            client.send_chat(BOB_JID, "inject", extra="<subject>Hi&#13;&#10;Bcc: victim@example.com</subject>")
            got = await asyncio.to_thread(smarthost.wait, lambda m: b"inject" in m["data"])
            injected = email.message_from_bytes(got[0]["data"], policy=email.policy.default)
            assert got[0]["to"] == [BOB] and injected["Bcc"] is None
            assert injected["Subject"] == "Hi Bcc: victim@example.com"

            # The smarthost refuses a recipient: the sender gets its words back.
            bad = client.send_chat(f"nobody\\40example.net@{DOMAIN}", "anyone?")
            err = await client.next_message(lambda m: m.get("id") == bad)
            cond, text = error_condition(err)
            assert cond == "not-acceptable" and "550" in text and "User unknown in virtual mailbox table" in text
        finally:
            await client.stop()

    run(scenario(), timeout=90)


def test_bounce_becomes_an_error_on_the_original_message(prosody, smarthost, mail_gateway, fresh_dir):
    async def scenario():
        client = await mail_user(prosody, "dora")
        try:
            msg_id = client.send_chat(BOB_JID, "this will bounce later")
            got = await asyncio.to_thread(smarthost.wait, lambda m: b"this will bounce later" in m["data"])
            original = email.message_from_bytes(got[0]["data"], policy=email.policy.default)["Message-ID"]
            dsn = write_mail(os.path.join(fresh_dir, "dsn.eml"), {
                "From": "MAILER-DAEMON@example.net", "To": f"dora@{MAIL_DOMAIN}", "Subject": "Undelivered Mail",
                "MIME-Version": "1.0",
                "Content-Type": "multipart/report; report-type=delivery-status; boundary=R"},
                b"--R\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
                b"--R\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
                b"Final-Recipient: rfc822; bob@example.net\r\nAction: failed\r\nStatus: 5.2.2\r\n"
                b"Diagnostic-Code: smtp; 552 5.2.2 mailbox full\r\n\r\n"
                b"--R\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: dora@mail.example.org\r\n"
                b"Message-ID: " + original.encode() + b"\r\n\r\n--R--\r\n")
            r = await asyncio.to_thread(swaks, mail_gateway.smtp_port, "--from", "<>", "--to", f"dora@{MAIL_DOMAIN}",
                                        "--data", dsn)
            assert r.returncode == 0, r.stdout
            err = await client.next_message(lambda m: m.get("id") == msg_id)
            cond, text = error_condition(err)
            assert err.get("type") == "error" and cond == "recipient-unavailable"
            assert "bob@example.net" in text and "mailbox full" in text
        finally:
            await client.stop()

    run(scenario(), timeout=60)


def test_deliver_command_for_an_mta_pipe(prosody, mail_gateway):
    import subprocess
    import sys

    async def scenario():
        client = await mail_user(prosody, "eve")
        try:
            raw = f"From: {BOB}\r\nTo: eve@{MAIL_DOMAIN}\r\nSubject: piped\r\n\r\nvia the pipe\r\n".encode()
            done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "gateway.cli", "deliver",
                                                            "--config", mail_gateway.config_path, "--sender", BOB,
                                                            f"eve@{MAIL_DOMAIN}"], input=raw, capture_output=True)
            assert done.returncode == 0, done.stderr
            msg = await client.next_message(lambda m: body(m) == "via the pipe")
            assert msg.get("from") == BOB_JID
            nouser = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "gateway.cli", "deliver",
                                                              "--config", mail_gateway.config_path,
                                                              f"ghost@{MAIL_DOMAIN}"], input=raw, capture_output=True)
            assert nouser.returncode == 67 and b"5.1.1" in nouser.stderr
        finally:
            await client.stop()

    run(scenario(), timeout=60)


def test_smarthost_down_then_up_delivers_once(prosody, certs, fresh_dir):
    smarthost_port = free_port()
    gateway = start_gateway(prosody, fresh_dir, "maildown", adapter="email",
                            options=mail_options(free_port(), smarthost_port, certs),
                            outbox={"retry_initial": 0.3, "retry_max": 0.6, "deadline": 60.0})
    host = None

    async def scenario():
        nonlocal host
        client = await Client(prosody.register(f"fred{os.getpid()}", "pw"), "pw").start(prosody.c2s_port)
        try:
            await client.iq(gateway.domain, "set", register_form({"alias": "fred"}))
            client.send_chat(f"bob\\40example.net@{gateway.domain}", "sent while the smarthost is down")
            await asyncio.sleep(2.0)                        # several failed attempts
            host = Smarthost(smarthost_port, *certs).start()
            got = await asyncio.to_thread(host.wait, lambda m: b"smarthost is down" in m["data"])
            assert len(got) == 1
            await asyncio.sleep(1.5)
            assert len([m for m in host.received if b"smarthost is down" in m["data"]]) == 1
        finally:
            await client.stop()

    try:
        run(scenario(), timeout=60)
    finally:
        gateway.stop()
        if host:
            host.stop()
    assert "retry" in gateway.log()


def test_direct_mx_delivery(prosody, fresh_dir):
    """delivery = "mx": the recipient domain's MX, found through a real DNS server on loopback."""
    import sys

    from aiosmtpd.controller import Controller

    from gateway.testing.process import Server

    class MX:
        received = []

        async def handle_DATA(self, server, session, envelope):
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            return "250 2.0.0 Ok"

    mx = MX()
    mx_server = Controller(mx, hostname="127.0.0.1", port=free_port())
    mx_server.start()
    dns_port = free_port()
    dns_server = Server("dns", [sys.executable, "-m", "gateway.testing.dns", "--port", str(dns_port),
                                "--mx", "example.net=mx.example.net", "--a", "mx.example.net=127.0.0.1"],
                        os.path.join(fresh_dir, "dns.log")).start()
    dns_server.wait_log("dns listening")
    gateway = start_gateway(prosody, fresh_dir, "mailmx", adapter="email", options={
        "mail_domain": MAIL_DOMAIN, "delivery": "mx", "dns_servers": [f"127.0.0.1:{dns_port}"],
        "mx_port": mx_server.port, "smtp_listen": ""})

    async def scenario():
        client = await Client(prosody.register(f"mx{os.getpid()}", "pw"), "pw").start(prosody.c2s_port)
        try:
            await client.iq(gateway.domain, "set", register_form({"alias": "mxuser"}))
            client.send_chat(f"bob\\40example.net@{gateway.domain}", "straight to your MX")
            for _ in range(100):
                if mx.received:
                    break
                await asyncio.sleep(0.1)
            assert [(f, t) for f, t, _ in mx.received] == [(f"mxuser@{MAIL_DOMAIN}", [BOB])]
            assert b"straight to your MX" in mx.received[0][2]
            nowhere = client.send_chat(f"x\\40no-such-domain.example@{gateway.domain}", "lost?")
            err = await client.next_message(lambda m: m.get("id") == nowhere)
            cond, text = error_condition(err)
            assert cond == "remote-server-not-found" and "no-such-domain.example does not exist" in text
        finally:
            await client.stop()

    try:
        run(scenario(), timeout=60)
    finally:
        gateway.stop()
        dns_server.stop()
        mx_server.stop()


def test_addresses_are_unique_and_reserved_names_refused(prosody, mail_gateway):
    async def scenario():
        first = await mail_user(prosody, "hal")
        second = await Client(prosody.register(f"hal2{os.getpid()}", "pw"), "pw").start(prosody.c2s_port)
        try:
            cond, text = await second.iq_error(DOMAIN, "set", register_form({"alias": "hal"}))
            assert cond == "conflict" and f"hal@{MAIL_DOMAIN}" in text
            cond, text = await second.iq_error(DOMAIN, "set", register_form({"alias": "postmaster"}))
            assert cond == "not-acceptable" and "operator" in text
            cond, _ = await second.iq_error(DOMAIN, "set", register_form({"alias": "two words"}))
            assert cond == "not-acceptable"
            await second.iq(DOMAIN, "set", register_form({}))      # default: the XMPP user name
            form = await second.iq(DOMAIN, "get", "<query xmlns='jabber:iq:register'/>")
            assert f"hal2{os.getpid()}" in "".join(form.itertext())
        finally:
            await first.stop()
            await second.stop()

    run(scenario())


def files_in(gateway) -> set[str]:
    """The token folders of the gateway's file store (attachments kept for links)."""
    folder = os.path.join(os.path.dirname(gateway.config_path), "files")
    return set(os.listdir(folder)) if os.path.isdir(folder) else set()


def test_storage_fault_for_one_recipient_stores_nothing_then_retry_delivers_once(prosody, mail_gateway, fresh_dir):
    """
    All or none: a real storage fault (a trigger in the gateway's own SQLite file)
    for one of two recipients gets the client a 4xx and stores nothing for anyone,
    and leaves no attachment behind; the client's retry then reaches each once.
    """
    import base64
    import sqlite3

    async def scenario():
        ivy = await mail_user(prosody, "ivy")
        jon = await mail_user(prosody, "jon")
        db = sqlite3.connect(mail_gateway.db, timeout=30)
        try:
            jid = jon.boundjid.bare.replace("'", "''")
            db.execute(f"CREATE TRIGGER fault BEFORE INSERT ON queue WHEN NEW.jid = '{jid}' "
                       "BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
            db.commit()
            notes = b"meeting notes " + os.urandom(500).hex().encode()
            mail = write_mail(os.path.join(fresh_dir, "both.eml"), {
                "From": BOB, "To": f"ivy@{MAIL_DOMAIN}, jon@{MAIL_DOMAIN}", "Subject": "for both",
                "Message-ID": "<both-1@example.net>", "MIME-Version": "1.0",
                "Content-Type": "multipart/mixed; boundary=XX"},
                b"--XX\r\nContent-Type: text/plain\r\n\r\nfor both of you\r\n--XX\r\n"
                b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=notes.bin\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(notes).replace(b"\n", b"\r\n")
                + b"--XX--\r\n")
            send = ("--from", BOB, "--to", f"ivy@{MAIL_DOMAIN},jon@{MAIL_DOMAIN}", "--data", mail)
            before = files_in(mail_gateway)

            failed = await asyncio.to_thread(swaks, mail_gateway.smtp_port, *send)
            assert failed.returncode == 26 and "451 4.3.0" in failed.stdout, failed.stdout

            def ours(m):
                return (body(m) or "").startswith("for both of you")

            got = await asyncio.gather(ivy.quiet(seconds=3.0, predicate=ours), jon.quiet(seconds=3.0, predicate=ours))
            assert got == [[], []]                         # nobody got anything ...
            assert files_in(mail_gateway) == before        # ... and no attachment was left behind
            queued = db.execute("SELECT COUNT(*) FROM queue WHERE direction = 'in' AND payload LIKE ?",
                                ("%for both of you%",)).fetchone()[0]
            assert queued == 0

            db.execute("DROP TRIGGER fault")
            db.commit()
            retried = await asyncio.to_thread(swaks, mail_gateway.smtp_port, *send)
            assert retried.returncode == 0, retried.stdout
            got = await asyncio.gather(ivy.quiet(seconds=4.0, predicate=ours), jon.quiet(seconds=4.0, predicate=ours))
            assert [len(g) for g in got] == [1, 1]         # exactly one copy each
            urls = [m.find("{jabber:x:oob}x/{jabber:x:oob}url").text for m in (got[0][0], got[1][0])]
            for url in urls:
                with urllib.request.urlopen(url, timeout=5) as r:
                    assert r.read() == notes
            assert len(files_in(mail_gateway) - before) == 1   # one stored copy, shared by both recipients
        finally:
            db.execute("DROP TRIGGER IF EXISTS fault")
            db.commit()
            db.close()
            await ivy.stop()
            await jon.stop()

    run(scenario(), timeout=90)


def test_repeated_rcpt_is_delivered_once(prosody, mail_gateway):
    """50 identical RCPT TO (and one in other case) are one recipient: one delivery, not 51."""
    import smtplib

    async def scenario():
        kim = await mail_user(prosody, "kim")
        try:
            rcpts = [f"kim@{MAIL_DOMAIN}"] * 50 + [f"KIM@{MAIL_DOMAIN.upper()}"]
            data = f"From: {BOB}\r\nTo: kim@{MAIL_DOMAIN}\r\nSubject: once\r\n\r\nonly once please\r\n".encode()

            def send():
                with smtplib.SMTP("127.0.0.1", mail_gateway.smtp_port, "client.example.net", timeout=30) as s:
                    return s.sendmail(BOB, rcpts, data)

            refused = await asyncio.to_thread(send)
            assert refused == {}                           # every RCPT accepted, the repeats ignored
            got = await kim.quiet(seconds=4.0, predicate=lambda m: body(m) == "only once please")
            assert len(got) == 1
        finally:
            await kim.stop()

    run(scenario(), timeout=60)


def test_the_same_mail_resent_is_delivered_once(prosody, mail_gateway):
    """A client that lost our 250 (RFC 5321 §6.1's duplicate) sends the same mail again: one delivery."""
    import smtplib

    async def scenario():
        lea = await mail_user(prosody, "lea")
        try:
            data = (f"From: {BOB}\r\nTo: lea@{MAIL_DOMAIN}\r\nSubject: again\r\n"
                    "Message-ID: <resent-1@example.net>\r\n\r\nthe same mail twice\r\n").encode()

            def send():
                with smtplib.SMTP("127.0.0.1", mail_gateway.smtp_port, "client.example.net", timeout=30) as s:
                    return s.sendmail(BOB, [f"lea@{MAIL_DOMAIN}"], data)

            assert await asyncio.to_thread(send) == {}
            assert await asyncio.to_thread(send) == {}        # accepted again: the client must not bounce it
            got = await lea.quiet(seconds=4.0, predicate=lambda m: body(m) == "the same mail twice")
            assert len(got) == 1
        finally:
            await lea.stop()

    run(scenario(), timeout=60)
