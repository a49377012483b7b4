"""
Secrets at rest against the real gateway process and the real CLI: a gateway
that cannot decrypt a user's stored credentials (wrong key, missing old key)
tells that user so and the operator a metric, keeps serving everyone else, and
``xmpp-gateway rotate-key`` moves every row to the current key while the
gateway runs.

The SMS adapter with ``user_credentials = true`` stores a user's own Twilio
token as a secret; the Twilio simulator (the one stand-in: no carrier runs
here) knows only the operator's account, so a text sent on the user's own
credentials is refused with "credentials": that shows the secrets were opened
and used, where an unreadable row gets the gateway's own error instead.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from types import SimpleNamespace

import pytest

from gateway.registry.crypto import SecretBox
from gateway.testing.process import free_port
from tests.hostile.conftest import start_gateway
from tests.integration.gateway_fixture import register_form
from tests.integration.harness import Client, error_condition, http_get, run
from tests.integration.sms_support import TwilioSimulator, sms_options

CONTACT = "+12025550143"
OWN_TOKEN = "users-own-token-do-not-log-0042"
UNREADABLE = "cannot be decrypted"
_numbers = iter(range(100, 10000))


def new_number() -> str:
    return f"+1415556{next(_numbers):04d}"


@pytest.fixture(scope="module")
def simulator(workdir):
    sim = TwilioSimulator(workdir).start()
    yield sim
    sim.stop()


def sms_gateway(server, simulator, fresh_dir, name: str):
    web_port = free_port()
    return start_gateway(server, fresh_dir, name, adapter="sms", web_port=web_port,
                         options=sms_options(simulator, web_port, user_credentials=True),
                         outbox={"retry_initial": 0.3, "retry_max": 0.5, "deadline": 20.0})


def set_keys(gateway, key: str, old_keys: list[str] | None = None) -> None:
    """Rewrite the [registry] keys of the gateway's config file (the operator's edit)."""
    with open(gateway.config_path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r'(?m)^old_secret_keys = .*\n', "", text)
    line = f'secret_key = "{key}"\n'
    if old_keys is not None:
        line += "old_secret_keys = [" + ", ".join(f'"{k}"' for k in old_keys) + "]\n"
    text = re.sub(r'(?m)^secret_key = .*\n', lambda _: line, text)
    with open(gateway.config_path, "w", encoding="utf-8") as f:
        f.write(text)


def restart(gateway) -> None:
    gateway.stop()
    gateway.start()


def rotate_key(gateway) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "rotate-key", "--config", gateway.config_path],
                          capture_output=True, text=True, timeout=120)


def metric(gateway, name: str, **labels) -> float:
    _, text = http_get(f"http://127.0.0.1:{gateway.web_port}/metrics")
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return 0.0


async def user(server, gateway, name: str, fields: dict[str, str]) -> Client:
    client = await Client(server.register(f"{name}{os.getpid()}", "pw"), "pw").start(server.c2s_port)
    await client.iq(gateway.domain, "set", register_form(fields))
    return client


def own_credentials(number: str, token: str = OWN_TOKEN) -> dict[str, str]:
    return {"number": number, "account_sid": "AC" + "9" * 32, "auth_token": token}


async def answer_to(client: Client, gateway, text: str) -> tuple[str | None, str | None]:
    """The error a text to CONTACT gets ((None, None) if it was sent)."""
    msg_id = client.send_chat(f"{CONTACT}@{gateway.domain}", text)
    err = await client.next_message(lambda m: m.get("id") == msg_id and m.get("type") == "error", timeout=30)
    return error_condition(err)


def sent(simulator, text: str) -> bool:
    return any(m["body"] == text for m in simulator.messages())


def wait_sent(simulator, text: str, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not sent(simulator, text):
        assert time.monotonic() < deadline, f"{text!r} never reached the provider"
        time.sleep(0.05)


def test_undecryptable_secrets_get_an_error_stanza_and_a_metric(hostile_prosody, simulator, fresh_dir):
    """The gateway restarts with a key that does not open Alice's token: she is told, Bob is unaffected."""
    gateway = sms_gateway(hostile_prosody, simulator, fresh_dir, "hsecret")

    async def scenario():
        alice = await user(hostile_prosody, gateway, "secalice", own_credentials(new_number()))
        bob = await user(hostile_prosody, gateway, "secbob", {"number": new_number()})
        try:
            # Under the key they were sealed with, Alice's own credentials are used (the simulator refuses them).
            cond, text = await answer_to(alice, gateway, "before the new key")
            assert cond == "service-unavailable" and "credentials" in text
            set_keys(gateway, SecretBox.generate())       # the old key is lost
            restart(gateway)
            assert metric(gateway, "xmpp_gateway_secrets_undecryptable_total", component=gateway.domain) == 0
            cond, text = await answer_to(alice, gateway, "after the new key")
            assert cond == "internal-server-error" and UNREADABLE in text and "register again" in text
            assert not sent(simulator, "after the new key")      # never sent on the operator's account instead
            assert metric(gateway, "xmpp_gateway_secrets_undecryptable_total", component=gateway.domain) >= 1
            bob.send_chat(f"{CONTACT}@{gateway.domain}", "bob is unaffected")
            wait_sent(simulator, "bob is unaffected")
            # Registering again stores her credentials under the new key: they are used again.
            await alice.iq(gateway.domain, "set", register_form(own_credentials(new_number(), OWN_TOKEN + "x")))
            cond, text = await answer_to(alice, gateway, "registered again")
            assert cond == "service-unavailable" and "credentials" in text
        finally:
            await alice.stop()
            await bob.stop()

    try:
        run(scenario(), timeout=120)
    finally:
        gateway.stop()
    log = gateway.log()
    assert UNREADABLE in log and OWN_TOKEN not in log


def test_messages_waiting_in_the_outbox_are_refused_not_dropped(hostile_prosody, fresh_dir):
    """A text queued under the old key (the provider is down) gets the error once the key no longer opens it."""
    web_port, dead_port = free_port(), free_port()         # nothing listens on dead_port: every send is retried
    gateway = start_gateway(hostile_prosody, fresh_dir, "hsecret", adapter="sms", web_port=web_port,
                            options=sms_options(SimpleNamespace(url=f"http://127.0.0.1:{dead_port}"), web_port,
                                                user_credentials=True),
                            outbox={"retry_initial": 0.3, "retry_max": 0.5, "deadline": 60.0})

    async def scenario():
        alice = await user(hostile_prosody, gateway, "secwait", own_credentials(new_number()))
        try:
            offset = len(gateway.log())
            msg_id = alice.send_chat(f"{CONTACT}@{gateway.domain}", "waiting in the outbox")
            gateway.wait_log("retry", since=offset, timeout=30)
            set_keys(gateway, SecretBox.generate())
            restart(gateway)
            err = await alice.next_message(lambda m: m.get("id") == msg_id and m.get("type") == "error", timeout=30)
            cond, text = error_condition(err)
            assert cond == "internal-server-error" and UNREADABLE in text
        finally:
            await alice.stop()

    try:
        run(scenario(), timeout=120)
    finally:
        gateway.stop()


def sealed_rows(gateway) -> dict[str, str]:
    with sqlite3.connect(gateway.db) as db:
        return {jid: sealed for jid, sealed in db.execute("SELECT jid, secrets FROM registrations "
                                                          "WHERE secrets IS NOT NULL")}


def test_rotate_key_end_to_end_while_the_gateway_runs(hostile_prosody, simulator, fresh_dir):
    """K1 → (K2, old K1) → rotate-key → K2 alone: the user's credentials are used throughout."""
    gateway = sms_gateway(hostile_prosody, simulator, fresh_dir, "hsecret2")
    first_key = gateway.key

    async def scenario():
        alice = await user(hostile_prosody, gateway, "rotalice", own_credentials(new_number()))
        try:
            before = sealed_rows(gateway)
            assert len(before) == 1 and OWN_TOKEN not in next(iter(before.values()))
            # A row no key opens (sealed under a key the operator no longer has): reported, never destroyed.
            stray = SecretBox(SecretBox.generate()).seal({"auth_token": "lost"})
            with sqlite3.connect(gateway.db) as db:
                db.execute("INSERT INTO registrations (component, jid, foreign_id, settings, secrets, subscribed, "
                           "created_at, updated_at) VALUES (?, 'stray@localhost', '+14155559999', '{}', ?, 1, 0, 0)",
                           (gateway.domain, stray))
            new_key = SecretBox.generate()
            set_keys(gateway, new_key, [first_key])
            restart(gateway)
            cond, text = await answer_to(alice, gateway, "old key as an old key")
            assert cond == "service-unavailable" and "credentials" in text

            result = rotate_key(gateway)                  # the gateway keeps running meanwhile
            assert result.returncode == 1, result.stdout + result.stderr
            assert "1 re-encrypted" in result.stdout and "0 already current" in result.stdout
            assert "1 cannot be decrypted" in result.stdout
            assert f"{gateway.domain}\tstray@localhost" in result.stdout
            assert first_key not in result.stdout + result.stderr and new_key not in result.stdout + result.stderr
            after = sealed_rows(gateway)
            assert after[alice.boundjid.bare] != before[alice.boundjid.bare]
            assert after["stray@localhost"] == stray       # not destroyed
            again = rotate_key(gateway)                     # idempotent
            assert "0 re-encrypted" in again.stdout and "1 already current" in again.stdout
            assert sealed_rows(gateway) == after

            set_keys(gateway, new_key, [])                  # the old key is gone for good
            restart(gateway)
            cond, text = await answer_to(alice, gateway, "new key alone")
            assert cond == "service-unavailable" and "credentials" in text
        finally:
            await alice.stop()

    try:
        run(scenario(), timeout=150)
    finally:
        gateway.stop()
    assert OWN_TOKEN not in gateway.log()


def test_rotate_key_cli_errors_are_readable(fresh_dir):
    config = os.path.join(fresh_dir, "bad.toml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(f'[registry]\nurl = "sqlite:///{fresh_dir}/r.sqlite"\nsecret_key = "{SecretBox.generate()}"\n'
                'old_secret_keys = ["short"]\n')
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "rotate-key", "--config", config],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "registry.old_secret_keys" in result.stderr and "at least 16" in result.stderr
    assert "Traceback" not in result.stderr
