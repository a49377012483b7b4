"""
Backups as an operator takes them: `xmpp-gateway backup` while the gateway runs
with messages queued, the registry wiped, the copy put back as docs/operations.md
says, and every queued message delivered once. Registry commands leave the queue
alone; an unreadable row is reported, not a traceback; a newer schema is refused.
"""

import asyncio
import os
import re
import sqlite3
import subprocess
import sys

import pytest

from gateway.registry.crypto import SecretBox
from tests.integration.gateway_fixture import registered_client, start_gateway
from tests.integration.harness import Client, body, run


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=120)


def queue_rows(db: str) -> list[tuple]:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute("SELECT id, jid, direction, attempts, claimed_by, parked_at, payload FROM queue "
                            "ORDER BY id").fetchall()


def test_backup_while_running_then_restore_delivers_the_queued_messages_once(prosody, fresh_dir):
    gateway = start_gateway(prosody, fresh_dir, "backup", options={"unreachable": ["away"]},
                            outbox={"deadline": 3600.0, "retry_initial": 0.3, "retry_max": 1.0})
    copy = os.path.join(fresh_dir, "copy", "registry-backup.sqlite")
    os.makedirs(os.path.dirname(copy))
    texts = [f"queued {i}" for i in range(3)]

    async def scenario():
        client = await registered_client(prosody, gateway.domain, "backupuser", Client)
        try:
            for text in texts:
                client.send_chat(f"away@{gateway.domain}", text)
            await asyncio.sleep(0)
            await asyncio.to_thread(wait_rows, gateway.db, 3)
            before = queue_rows(gateway.db)
            # Every registry and queue-reading command, with messages waiting: the queue is untouched.
            for args in (["registry", "list", "--config", gateway.config_path],
                         ["registry", "export", "--config", gateway.config_path, os.path.join(fresh_dir, "e.json")],
                         ["registry", "import", os.path.join(fresh_dir, "e.json"), "--config", gateway.config_path],
                         ["queue", "list", "--all", "--config", gateway.config_path]):
                done = await asyncio.to_thread(cli, *args)
                assert done.returncode == 0, (args, done.stderr)
            assert [r[:3] + r[5:] for r in queue_rows(gateway.db)] == [r[:3] + r[5:] for r in before]
            # The documented order, FILE after --config, while the gateway runs.
            done = await asyncio.to_thread(cli, "backup", "--config", gateway.config_path, copy)
            assert done.returncode == 0, done.stderr
            assert oct(os.stat(copy).st_mode & 0o777) == "0o600"
            assert len(queue_rows(copy)) == 3

            gateway.stop()
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(gateway.db + suffix):
                    os.unlink(gateway.db + suffix)
            with open(gateway.config_path) as f:
                config = f.read()
            with open(gateway.config_path, "w") as f:
                f.write(config.replace('unreachable = ["away"]', "unreachable = []"))
            subprocess.run(["cp", copy, gateway.db], check=True)          # the documented restore
            await asyncio.to_thread(gateway.start)
            got = []
            while len(got) < 3:
                m = await client.next_message(lambda m: body(m) in texts, timeout=30)
                got.append(body(m))
            assert sorted(got) == texts
            with pytest.raises(AssertionError, match="no matching message"):      # and none twice
                await client.next_message(lambda m: body(m) in texts, timeout=3)
            listed = await asyncio.to_thread(cli, "registry", "list", "--config", gateway.config_path)
            assert len(listed.stdout.splitlines()) == 1 and "backupuser" in listed.stdout     # the registration too
        finally:
            await client.stop()

    try:
        run(scenario(), timeout=180)
    finally:
        gateway.stop()


def wait_rows(db: str, count: int) -> None:
    from gateway.testing.process import wait_for

    wait_for(lambda: len(queue_rows(db)) >= count, 30, f"{count} queued rows")


def test_an_undecryptable_row_is_reported_and_a_newer_schema_refused(prosody, fresh_dir):
    gateway = start_gateway(prosody, fresh_dir, "backupkey", adapter="sms", web=True, options={
        "provider": "twilio", "account_sid": "AC" + "2" * 32, "auth_token": "backup-token-123456",
        "api_url": "http://127.0.0.1:9", "public_url": "http://127.0.0.1:9", "user_credentials": True})

    async def scenario():
        client = await registered_client(prosody, gateway.domain, "keyuser", Client, fields={
            "number": "+14155550111", "account_sid": "AC" + "3" * 32, "auth_token": "the-users-own-token-9876"})
        await client.stop()

    try:
        run(scenario(), timeout=60)
    finally:
        gateway.stop()
    with open(gateway.config_path) as f:
        config = f.read()
    with open(gateway.config_path, "w") as f:
        f.write(re.sub(r'(?m)^secret_key = .*$', f'secret_key = "{SecretBox.generate()}"', config))
    listed = cli("registry", "list", "--config", gateway.config_path)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert "keyuser" in listed.stdout and "secrets undecryptable" in listed.stdout
    assert "1 with secrets no configured key opens" in listed.stderr

    with sqlite3.connect(gateway.db) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (999)")
    for args in (["registry", "list", "--config", gateway.config_path],
                 ["backup", os.path.join(fresh_dir, "b.sqlite"), "--config", gateway.config_path],
                 ["queue", "list", "--config", gateway.config_path]):
        done = cli(*args)
        assert done.returncode == 2 and "newer than this xmpp-gateway" in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    started = cli("run", gateway.config_path)
    assert started.returncode == 2 and "newer than this xmpp-gateway" in started.stdout + started.stderr
    with sqlite3.connect(gateway.db) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 999   # nothing migrated
