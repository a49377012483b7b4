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


def _start_demo(directory: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "demo", "--dir", directory],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = ""
    deadline = time.monotonic() + 60
    while out.count(": authenticated") < 4 and time.monotonic() < deadline and proc.poll() is None:
        out += proc.stdout.readline()
    assert out.count(": authenticated") >= 4, out
    return proc, out


def _stop_demo(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)


def test_a_second_run_keeps_what_the_first_registered(fresh_dir):
    """
    The demo used to make a new registry key on every run while keeping the
    registry: after a restart a registered user's messages came back as
    "stored secrets cannot be decrypted". And Prosody, which anyone on the
    machine can log in to, must not run as root.
    """
    directory = os.path.join(fresh_dir, "demo")

    def login(out):
        return (int(re.search(r"127\.0\.0\.1 port (\d+)", out).group(1)),
                re.search(r"alice@localhost\s+password: (\S+)", out).group(1))

    proc, out = _start_demo(directory)
    try:
        assert "A new demo in" in out
        pid = int(open(os.path.join(directory, "prosody", "prosody.pid")).read().split()[0])
        uid = int(next(line for line in open(f"/proc/{pid}/status") if line.startswith("Uid:")).split()[1])
        assert os.geteuid() != 0 or uid != 0, "Prosody runs as root"
        assert oct(os.stat(os.path.join(directory, "demo-state.json")).st_mode & 0o777) == "0o600"
        port, password = login(out)

        async def register():
            client = await Client("alice@localhost", password).start(port)
            try:
                await client.iq("sms.localhost", "set",
                                "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>"
                                "<field var='number'><value>+14155550100</value></field></x></query>")
                client.send_chat("+12025550143@sms.localhost", "first run")
                await client.next_message(lambda m: (body(m) or "").startswith("(simulated reply"))
            finally:
                await client.stop()

        run(register())
    finally:
        _stop_demo(proc)

    proc, out = _start_demo(directory)
    try:
        assert "Reusing the logins" in out
        port, again = login(out)
        assert again == password

        async def write_again():
            client = await Client("alice@localhost", password).start(port)
            try:
                client.send_chat("+12025550143@sms.localhost", "second run")
                reply = await client.next_message(lambda m: m.get("type") == "error"
                                                  or (body(m) or "").startswith("(simulated reply"))
                assert reply.get("type") != "error", reply
                assert "second run" in body(reply)
            finally:
                await client.stop()

        run(write_again())
    finally:
        _stop_demo(proc)


def test_the_demo_help_and_install_say_what_it_does():
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "demo", "--help"], capture_output=True, text=True)
    assert "echo, SMS, email and IRC adapters" in " ".join(done.stdout.split()), done.stdout
    script = open(os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "install.sh")).read()
    demo_branch = script.split('if [ "$what" = demo ]; then', 1)[1].split("else", 1)[0]
    assert "[test]" not in demo_branch and "pip install" in demo_branch
