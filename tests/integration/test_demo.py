"""The README's first Quick start command, as a user runs it: log in with what it prints, get an echo."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

from tests.integration.harness import Client, body, run


def test_demo_prints_logins_that_work(fresh_dir):
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "demo", "--dir", os.path.join(fresh_dir, "demo")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = ""
    try:
        deadline = time.monotonic() + 30
        while out.count(": authenticated") < 4 and time.monotonic() < deadline and proc.poll() is None:
            out += proc.stdout.readline()
        assert "authenticated" in out, out
        port = int(re.search(r"127\.0\.0\.1 port (\d+)", out).group(1))
        password = re.search(r"alice@localhost\s+password: (\S+)", out).group(1)

        async def scenario():
            client = await Client("alice@localhost", password).start(port)
            try:
                await client.iq("echo.localhost", "set",
                                "<query xmlns='jabber:iq:register'><username>alice</username></query>")
                client.send_chat("hello@echo.localhost", "is this thing on?")
                echo = await client.next_message(lambda m: body(m) is not None)
                assert body(echo) == "is this thing on?"
                await client.iq("sms.localhost", "set",
                                "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>"
                                "<field var='number'><value>+14155550100</value></field></x></query>")
                client.send_chat("+12025550143@sms.localhost", "texting the simulator", receipt=True)
                reply = await client.next_message(lambda m: (body(m) or "").startswith("(simulated reply"))
                assert reply.get("from") == "+12025550143@sms.localhost"
                assert "texting the simulator" in body(reply)
                await client.iq("mail.localhost", "set",
                                "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>"
                                "<field var='alias'><value>alice</value></field></x></query>")
                smtp_port = re.search(r"swaks --server 127\.0\.0\.1 --port (\d+)", out).group(1)
                sent = await asyncio.to_thread(subprocess.run, [
                    "swaks", "--server", "127.0.0.1", "--port", smtp_port, "--from", "bob@example.net",
                    "--to", "alice@mail.example.test", "--body", "mail for the demo"], capture_output=True)
                assert sent.returncode == 0, sent.stdout
                mail = await client.next_message(lambda m: body(m) == "mail for the demo")
                assert mail.get("from") == "bob\\40example.net@mail.localhost"
                client.send_raw("<presence to='#demo%localhost@irc.localhost/alice'>"
                                "<x xmlns='http://jabber.org/protocol/muc'/></presence>")
                own = await client.next_presence(lambda p: p.get("from") == "#demo%localhost@irc.localhost/alice")
                assert own.find("{http://jabber.org/protocol/muc#user}x/"
                                "{http://jabber.org/protocol/muc#user}status[@code='110']") is not None
            finally:
                await client.stop()

        run(scenario())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    assert proc.returncode == 0
