"""Secrets at rest: the salted KDF, legacy tokens, MultiFernet rotation, and the registry around them."""

from __future__ import annotations

import base64
import hashlib
import itertools
import sqlite3

import pytest
import pytest_twisted
from cryptography.fernet import Fernet

from gateway.model import Registration
from gateway.registry import SQLRegistry
from gateway.registry.crypto import KeyError_, SecretBox, SecretsUnreadable, check_key, derive, new_salt

PASSPHRASE = "correct horse battery staple"
SECRETS = {"password": "hunter2-secret"}
_dbs = itertools.count()


def old_release_token(passphrase: str, secrets: dict) -> str:
    """What releases before the salted KDF stored: Fernet keyed by one unsalted SHA-256 of the passphrase."""
    import json

    key = base64.urlsafe_b64encode(hashlib.sha256(passphrase.encode()).digest())
    return Fernet(key).encrypt(json.dumps(secrets).encode()).decode()


def test_salt_changes_the_derived_key():
    salt1, salt2 = new_salt(), new_salt()
    assert salt1 != salt2
    assert derive(PASSPHRASE, salt1) == derive(PASSPHRASE, salt1)
    assert derive(PASSPHRASE, salt1) != derive(PASSPHRASE, salt2)
    token = SecretBox(PASSPHRASE, salt=salt1).seal(SECRETS)
    assert SecretBox(PASSPHRASE, salt=salt1).open(token) == SECRETS
    with pytest.raises(SecretsUnreadable):
        SecretBox(PASSPHRASE, salt=salt2).open(token)


def test_new_tokens_are_not_the_unsalted_derivation():
    salt = new_salt()
    token = SecretBox(PASSPHRASE, salt=salt).seal(SECRETS)
    legacy = Fernet(base64.urlsafe_b64encode(hashlib.sha256(PASSPHRASE.encode()).digest()))
    with pytest.raises(Exception):
        legacy.decrypt(token.encode())


def test_legacy_tokens_still_open_and_rotate_to_the_salted_key():
    box = SecretBox(PASSPHRASE, salt=new_salt())
    token = old_release_token(PASSPHRASE, SECRETS)
    assert box.open(token) == SECRETS
    assert not box.is_current(token)
    rotated = box.rotate(token)
    assert box.is_current(rotated) and box.open(rotated) == SECRETS
    assert box.is_current(box.seal(SECRETS))


def test_multifernet_opens_with_old_keys_and_seals_with_the_current():
    k1, k2 = SecretBox.generate(), SecretBox.generate()
    old_token = SecretBox(k1).seal(SECRETS)
    both = SecretBox(k2, [k1])
    assert both.open(old_token) == SECRETS and not both.is_current(old_token)
    new_token = both.seal(SECRETS)
    assert SecretBox(k2).open(new_token) == SECRETS
    with pytest.raises(SecretsUnreadable):
        SecretBox(k1).open(new_token)
    with pytest.raises(SecretsUnreadable):
        SecretBox(k2).open(old_token)
    assert SecretBox(k2).open(both.rotate(old_token)) == SECRETS
    with pytest.raises(SecretsUnreadable):
        both.rotate(SecretBox(SecretBox.generate()).seal(SECRETS))


def test_a_passphrase_can_be_an_old_key_too():
    salt = new_salt()
    token = SecretBox(PASSPHRASE, salt=salt).seal(SECRETS)
    legacy = old_release_token(PASSPHRASE, SECRETS)
    box = SecretBox(SecretBox.generate(), [PASSPHRASE], salt=salt)
    assert box.open(token) == SECRETS and box.open(legacy) == SECRETS


def test_key_checks():
    for bad, why in [("", "empty"), ("short", "at least 16")]:
        with pytest.raises(KeyError_, match=why):
            check_key(bad)
    check_key(SecretBox.generate())
    check_key(PASSPHRASE)
    with pytest.raises(KeyError_, match="salt"):
        SecretBox(PASSPHRASE)
    with pytest.raises(KeyError_, match="at least 16"):
        SecretBox(SecretBox.generate(), ["short"])


# -- the registry ------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, fresh_dir):
    if request.param == "sqlite":
        return f"sqlite:///{fresh_dir}/registry.sqlite"
    return request.getfixturevalue("postgresql").create_database(f"crypto{next(_dbs)}")


@pytest.fixture
def opened():
    registries = []

    @pytest_twisted.inlineCallbacks
    def open_(url, key, old=()):
        reg = SQLRegistry(url, key, old_keys=old)
        yield reg.open()
        registries.append(reg)
        return reg

    yield open_
    for reg in registries:
        reg.close()


def raw_secrets(registry, jid: str):
    d = registry._run("SELECT secrets FROM registrations WHERE jid = ?", (jid,))
    return d.addCallback(lambda rows: rows[0][0])


@pytest_twisted.inlineCallbacks
def test_salt_is_stable_per_registry_and_differs_between_registries(url, opened, fresh_dir):
    first = yield opened(url, PASSPHRASE)
    yield first.put_registration(Registration("c.example", "u@example.org", "+1", {}, SECRETS))
    again = yield opened(url, PASSPHRASE)              # a second process, or the same after a restart
    assert again.kdf_salt == first.kdf_salt and len(first.kdf_salt) == 16
    assert (yield again.get_registration("c.example", "u@example.org")).secrets == SECRETS
    other = yield opened(f"sqlite:///{fresh_dir}/other.sqlite", PASSPHRASE)
    assert other.kdf_salt != first.kdf_salt


@pytest_twisted.inlineCallbacks
def test_unreadable_secrets_come_back_flagged_and_are_kept(url, opened):
    k1 = SecretBox.generate()
    before = yield opened(url, k1)
    yield before.put_registration(Registration("c.example", "a@example.org", "+1", {"n": 1}, SECRETS))
    yield before.put_registration(Registration("c.example", "b@example.org", "+2", {}, {}))
    sealed = (yield raw_secrets(before, "a@example.org"))
    after = yield opened(url, SecretBox.generate())
    a = yield after.get_registration("c.example", "a@example.org")
    assert a.secrets_unreadable and a.secrets == {} and a.settings == {"n": 1}
    listed = yield after.list_registrations("c.example")        # one bad row does not fail the listing
    assert [(r.jid, r.secrets_unreadable) for r in listed] == [("a@example.org", True), ("b@example.org", False)]
    a.settings = {"n": 2}
    yield after.put_registration(a)                               # a settings change keeps the token
    assert (yield raw_secrets(after, "a@example.org")) == sealed
    back = yield opened(url, SecretBox.generate(), [k1])
    got = yield back.get_registration("c.example", "a@example.org")
    assert got.secrets == SECRETS and got.settings == {"n": 2} and not got.secrets_unreadable
    # Registering again (a new Registration) replaces the token.
    yield after.put_registration(Registration("c.example", "a@example.org", "+1", {}, {"password": "new"}))
    assert (yield after.get_registration("c.example", "a@example.org")).secrets == {"password": "new"}


@pytest_twisted.inlineCallbacks
def test_rotation_counts_and_is_idempotent(url, opened):
    k1, k2 = SecretBox.generate(), SecretBox.generate()
    old = yield opened(url, k1)
    for n in range(5):
        yield old.put_registration(Registration("c.example", f"u{n}@example.org", f"+{n}", {}, {"pw": str(n)}))
    yield old.put_registration(Registration("c.example", "nosecrets@example.org", "+9", {}, {}))
    stray = SecretBox(SecretBox.generate()).seal({"pw": "lost"})
    yield old._op("UPDATE registrations SET secrets = ? WHERE jid = ?", (stray, "u4@example.org"))
    new = yield opened(url, k2, [k1])
    result = yield new.rotate_secrets(batch=2)                     # several batches
    assert result == {"rotated": 4, "current": 0, "changed": 0, "unreadable": [("c.example", "u4@example.org")]}
    assert (yield raw_secrets(new, "u4@example.org")) == stray             # reported, not destroyed
    again = yield new.rotate_secrets(batch=2)
    assert again == {"rotated": 0, "current": 4, "changed": 0, "unreadable": [("c.example", "u4@example.org")]}
    only_new = yield opened(url, k2)
    for n in range(4):
        assert (yield only_new.get_registration("c.example", f"u{n}@example.org")).secrets == {"pw": str(n)}


@pytest_twisted.inlineCallbacks
def test_rotation_does_not_overwrite_a_concurrent_change(url, opened):
    k1, k2 = SecretBox.generate(), SecretBox.generate()
    yield (yield opened(url, k1)).put_registration(Registration("c.example", "u@example.org", "+1", {}, {"pw": "a"}))
    rotator = yield opened(url, k2, [k1])
    gateway = yield opened(url, k2, [k1])
    [(component, jid, token)] = yield rotator.sealed_batch()
    # The gateway changes the registration after the rotator read the row and before it writes.
    yield gateway.put_registration(Registration("c.example", "u@example.org", "+1", {}, {"pw": "changed"}))
    assert (yield rotator.replace_sealed([(component, jid, token, rotator.box.rotate(token))])) == 0
    assert (yield rotator.get_registration("c.example", "u@example.org")).secrets == {"pw": "changed"}
    result = yield rotator.rotate_secrets()
    assert result["rotated"] == 0 and result["current"] == 1   # the gateway sealed it with the current key


@pytest_twisted.inlineCallbacks
def test_export_import_with_a_passphrase_between_registries_with_other_salts(opened, fresh_dir):
    source = yield opened(f"sqlite:///{fresh_dir}/a.sqlite", PASSPHRASE)
    yield source.put_registration(Registration("c.example", "u@example.org", "+1", {}, SECRETS))
    rows = yield source.export()
    target = yield opened(f"sqlite:///{fresh_dir}/b.sqlite", PASSPHRASE)
    with pytest.raises(SecretsUnreadable):                        # without the exporting registry's salt
        yield target.import_(rows)
    assert (yield target.import_(rows, source.kdf_salt)) == 1
    got = yield target.get_registration("c.example", "u@example.org")
    assert got.secrets == SECRETS
    assert target.box.is_current((yield raw_secrets(target, "u@example.org")))   # re-sealed for this registry


@pytest_twisted.inlineCallbacks
def test_migration_numbers_are_applied_by_number(fresh_dir):
    """A migration numbered below one already applied (parallel work landing late) still runs."""
    from gateway.registry import migrations

    url = f"sqlite:///{fresh_dir}/late.sqlite"
    reg = SQLRegistry(url, SecretBox.generate())
    yield reg.open()
    reg.close()
    late = (max(v for v, _ in migrations.MIGRATIONS) - 1000, ["CREATE TABLE late_one (x INTEGER)"])
    migrations.MIGRATIONS.append(late)
    try:
        reg = SQLRegistry(url, SecretBox.generate())
        yield reg.open()
        reg.close()
    finally:
        migrations.MIGRATIONS.remove(late)
    with sqlite3.connect(f"{fresh_dir}/late.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM late_one").fetchone() == (0,)


def cli(*args, stdin=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=60)


@pytest_twisted.inlineCallbacks
def test_cli_export_keeps_secrets_sealed_and_carries_the_salt(opened, fresh_dir):
    """`registry export` never prints a secret; `registry import` opens a passphrase's tokens elsewhere."""
    import json

    from tests.unit.test_config import GOOD, KEY

    def config(name: str, key: str) -> str:
        path = f"{fresh_dir}/{name}.toml"
        with open(path, "w", encoding="utf-8") as f:
            f.write(GOOD.replace("sqlite:///tmp/x.sqlite", f"sqlite:///{fresh_dir}/{name}.sqlite")
                    .replace(f'secret_key = "{KEY}"', f'secret_key = "{key}"'))
        return path

    source = yield opened(f"sqlite:///{fresh_dir}/a.sqlite", PASSPHRASE)
    yield source.put_registration(Registration("echo.example.org", "u@example.org", "x", {}, SECRETS))
    exported = cli("registry", "export", "--config", config("a", PASSPHRASE))
    assert exported.returncode == 0, exported.stderr
    assert SECRETS["password"] not in exported.stdout and PASSPHRASE not in exported.stdout
    assert base64.b64decode(json.loads(exported.stdout)["kdf_salt"]) == source.kdf_salt
    imported = cli("registry", "import", "-", "--config", config("b", PASSPHRASE), stdin=exported.stdout)
    assert imported.returncode == 0 and "imported 1" in imported.stdout, imported.stderr
    target = yield opened(f"sqlite:///{fresh_dir}/b.sqlite", PASSPHRASE)
    assert (yield target.get_registration("echo.example.org", "u@example.org")).secrets == SECRETS
    wrong = cli("registry", "import", "-", "--config", config("c", "another passphrase entirely"),
                stdin=exported.stdout)
    assert wrong.returncode == 1 and "cannot be decrypted" in wrong.stderr and "Traceback" not in wrong.stderr


def test_a_passphrase_is_stretched_with_scrypt_n_2_15_r_8_p_1_needing_32_mib():
    """
    What docs/operations.md states of the passphrase key: scrypt with
    n = 2^15, r = 8, p = 1 (the same key as the standard library's scrypt with
    those parameters), which needs 128·n·r = 32 MiB: under that, it cannot run.
    """
    import hashlib

    salt = b"0123456789abcdef"
    passphrase = "correct horse battery staple"
    reference = hashlib.scrypt(passphrase.encode(), salt=salt, n=2 ** 15, r=8, p=1, dklen=32,
                               maxmem=33 * 1024 * 1024)
    assert derive(passphrase, salt) == base64.urlsafe_b64encode(reference)
    with pytest.raises(ValueError):
        hashlib.scrypt(passphrase.encode(), salt=salt, n=2 ** 15, r=8, p=1, dklen=32, maxmem=32 * 1024 * 1024 - 1)
