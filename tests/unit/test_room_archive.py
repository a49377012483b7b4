"""
The room archive in the registry (migration 8), on SQLite and a real PostgreSQL:
rows written through the group commit, pages for XEP-0313, purges for retention.
"""

import itertools
import time

import pytest
import pytest_twisted

from gateway.model import Registration
from gateway.registry import SQLRegistry
from gateway.registry.crypto import SecretBox
from gateway.registry.retention import Retention

KEY = SecretBox.generate()
_dbs = itertools.count()
C, U, R = "irc.example", "u@example.org", "#chan%irc.example.net"


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, fresh_dir):
    if request.param == "sqlite":
        url = f"sqlite:///{fresh_dir}/registry.sqlite"
    else:
        url = request.getfixturevalue("postgresql").create_database(f"arch{next(_dbs)}")
    reg = SQLRegistry(url, KEY, instance_id="test-1", lease=60)
    pytest_twisted.blockon(reg.open())
    yield reg
    reg.close()


def row(n, user=U, room=R, created_us=None):
    created = created_us if created_us is not None else 1_700_000_000_000_000 + n
    return (C, user, room, f"{created:014x}0000", f"id-{n}", "bob", f"line {n}", None, created, created)


@pytest_twisted.inlineCallbacks
def test_the_migration_creates_the_archive_on_both_dialects(registry):
    versions = yield registry._run("SELECT version FROM schema_version", ())
    assert 8 in {r[0] for r in versions}
    assert (yield registry._run("SELECT COUNT(*) FROM room_archive", ()))[0][0] == 0


@pytest_twisted.inlineCallbacks
def test_rows_go_in_with_the_group_commit_and_page_both_ways(registry):
    for n in range(7):
        registry.archive_room_message(row(n))
    registry.archive_room_message(row(99, user="other@example.org"))
    yield registry.settled()

    def bodies(page):
        rows, more = page
        return [r[3] for r in rows], more

    assert bodies((yield registry.room_archive_page(C, U, R, limit=3))) == (["line 0", "line 1", "line 2"], True)
    after = yield registry.room_archive_seq(C, U, R, "id-2")
    assert bodies((yield registry.room_archive_page(C, U, R, after=after, limit=10))) == (
        [f"line {n}" for n in range(3, 7)], False)
    assert bodies((yield registry.room_archive_page(C, U, R, last=True, limit=2))) == (["line 5", "line 6"], True)
    before = yield registry.room_archive_seq(C, U, R, "id-1")
    assert bodies((yield registry.room_archive_page(C, U, R, before=before, limit=5))) == (["line 0"], False)
    base = 1_700_000_000_000_000
    assert bodies((yield registry.room_archive_page(C, U, R, start_us=base + 2, end_us=base + 3))) == (
        ["line 2", "line 3"], False)
    assert (yield registry.room_archive_seq(C, U, R, "no-such")) is None
    assert (yield registry.room_archive_seq(C, "other@example.org", R, "id-2")) is None   # one user's ids only
    assert (yield registry.has_room_archive(C, U, R)) is True
    assert (yield registry.has_room_archive(C, U, "#other%irc.example.net")) is False


@pytest_twisted.inlineCallbacks
def test_a_faulty_row_costs_only_itself(registry):
    registry.archive_room_message(row(1))
    bad = list(row(2))
    bad[6] = None                                  # a NULL body: refused by the table
    registry.archive_room_message(tuple(bad))
    registry.archive_room_message(row(3))
    yield registry.settled()
    deadline = time.monotonic() + 30
    while True:                                     # the retries, one row each, run after the batch failed
        rows, _ = yield registry.room_archive_page(C, U, R)
        if (registry._batch.rows_lost >= 1 and len(rows) >= 2) or time.monotonic() > deadline:
            break
    assert [r[3] for r in rows] == ["line 1", "line 3"] and registry._batch.rows_lost == 1


@pytest_twisted.inlineCallbacks
def test_retention_by_age_and_by_rows_per_room_and_with_the_user(registry):
    now_us = int(time.time() * 1_000_000)
    old = now_us - 40 * 86400 * 1_000_000
    for n in range(3):
        registry.archive_room_message(row(n, created_us=old + n))
    for n in range(3, 10):
        registry.archive_room_message(row(n, created_us=now_us + n))
    for n in range(4):
        registry.archive_room_message(row(20 + n, room="#small%irc.example.net", created_us=now_us + n))
    yield registry.settled()
    job = Retention(registry, {"interval": 3600.0, "message_ids_days": 30.0, "threads_days": 90.0,
                               "counters_days": 2.0, "seen_days": 7.0, "batch": 2, "room_archive_days": 30.0,
                               "room_archive_rows": 5}, clock=None)
    job.running = True
    purged = yield job.run()
    assert purged["room_archive"] == 3 and purged["room_archive_rows"] == 2
    rows, _ = yield registry.room_archive_page(C, U, R)
    assert [r[3] for r in rows] == [f"line {n}" for n in range(5, 10)]
    rows, _ = yield registry.room_archive_page(C, U, "#small%irc.example.net")
    assert len(rows) == 4
    assert (yield job.run())["room_archive_rows"] == 0
    yield registry.put_registration(Registration(C, U))
    yield registry.delete_registration(C, U)
    assert not (yield registry.has_room_archive(C, U, R))


@pytest_twisted.inlineCallbacks
def test_one_executemany_per_group_commit(registry, monkeypatch):
    """The rows of a burst go in as one statement per batch, not one per row (issue 12)."""
    from gateway.registry import sql
    batches = []
    original = sql._executemany

    def counting(txn, query, rows):
        batches.append(len(rows))
        return original(txn, query, rows)

    monkeypatch.setattr(sql, "_executemany", counting)
    for n in range(300):
        registry.archive_room_message(row(n))
    yield registry.settled()
    # The first row goes at once (nothing was being written); the other 299 wait for that commit.
    assert batches == [1, 299]
    assert (yield registry._run("SELECT COUNT(*) FROM room_archive", ()))[0][0] == 300
