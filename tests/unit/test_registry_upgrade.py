"""
A registry made by a gateway that knew migrations up to 7 (before the room
archive and roster contacts) is brought up to date on open, SQLite and
PostgreSQL, keeping what it held.
"""

import itertools

import pytest
import pytest_twisted

from gateway.model import Registration
from gateway.registry import SQLRegistry
from gateway.registry import migrations
from gateway.registry.crypto import SecretBox

KEY = SecretBox.generate()
_dbs = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, fresh_dir):
    if request.param == "sqlite":
        return f"sqlite:///{fresh_dir}/registry.sqlite"
    return request.getfixturevalue("postgresql").create_database(f"upg{next(_dbs)}")


@pytest_twisted.inlineCallbacks
def test_a_registry_of_migration_7_upgrades_to_the_room_archive_and_roster_contacts(url, monkeypatch):
    old = [m for m in migrations.MIGRATIONS if m[0] <= 7]
    monkeypatch.setattr(migrations, "MIGRATIONS", old)
    monkeypatch.setattr("gateway.registry.sql.MIGRATIONS", old)
    monkeypatch.setattr("gateway.registry.backup.MIGRATIONS", old)
    reg = SQLRegistry(url, KEY, instance_id="test-1", lease=60)
    yield reg.open()
    assert (yield reg.schema_version()) == 7
    yield reg.put_registration(Registration("c.example", "u@example.org"))
    reg.close()
    monkeypatch.undo()

    reg = SQLRegistry(url, KEY, instance_id="test-1", lease=60)
    try:
        yield reg.open()
        assert (yield reg.schema_version()) == max(v for v, _ in migrations.MIGRATIONS)
        assert (yield reg.get_registration("c.example", "u@example.org")) is not None
        reg.archive_room_message(("c.example", "u@example.org", "#r%irc", "0001", "id1", "bob", "hi", None, 1, 1))
        yield reg.settled()
        assert (yield reg.has_room_archive("c.example", "u@example.org", "#r%irc"))
        yield reg.put_roster_contact("c.example", "u@example.org", "bob%irc", "roster")
        assert (yield reg.roster_contact("c.example", "u@example.org", "bob%irc")) == "roster"
    finally:
        reg.close()
