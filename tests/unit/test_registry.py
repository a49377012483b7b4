"""
One registry suite, run against SQLite and a real PostgreSQL: both
implementations must behave the same for everything the bridge relies on.
"""

import itertools
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import defer

from gateway.model import Registration
from gateway.registry import QueueItem, RegistrationConflict, SQLRegistry
from gateway.registry.crypto import KeyError_, SecretBox
from gateway.registry.migrations import MIGRATIONS
from tests.unit.registries import open_either

KEY = SecretBox.generate()
_dbs = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, fresh_dir):
    return open_either(request, fresh_dir, KEY, "reg", "test-1")


def item(component="c.example", jid="u@example.org", direction="out", n=0, deadline=10**12):
    return QueueItem(id=f"id-{direction}-{n}-{jid}", component=component, jid=jid, direction=direction,
                     payload={"body": f"m{n}"}, attempts=0, deadline=deadline, created_at=1000.0 + n)


@pytest_twisted.inlineCallbacks
def test_registration_round_trip_with_encrypted_secrets(registry):
    reg = Registration("c.example", "u@example.org", foreign_id="+15551234567",
                       settings={"nick": "u"}, secrets={"password": "hunter2-secret"})
    yield registry.put_registration(reg)
    got = yield registry.get_registration("c.example", "u@example.org")
    assert got.foreign_id == "+15551234567"
    assert got.settings == {"nick": "u"}
    assert got.secrets == {"password": "hunter2-secret"}
    assert got.subscribed is True
    by_foreign = yield registry.registration_by_foreign_id("c.example", "+15551234567")
    assert by_foreign.jid == "u@example.org"
    exported = yield registry.export()
    assert "hunter2-secret" not in repr(exported)
    assert (yield registry.get_registration("other.example", "u@example.org")) is None


@pytest_twisted.inlineCallbacks
def test_secrets_are_not_stored_in_clear(registry, fresh_dir):
    yield registry.put_registration(Registration("c.example", "u@example.org", secrets={"pw": "plain-text-pw"}))
    if registry.dialect == "sqlite":
        rows = sqlite3.connect(registry.path).execute("SELECT secrets FROM registrations").fetchall()
        assert rows and "plain-text-pw" not in rows[0][0]
    exported = yield registry.export()
    assert exported[0]["sealed_secrets"] and "plain-text-pw" not in exported[0]["sealed_secrets"]


@pytest_twisted.inlineCallbacks
def test_foreign_id_is_unique_per_component(registry):
    yield registry.put_registration(Registration("c.example", "a@example.org", foreign_id="+1555"))
    with pytest.raises(RegistrationConflict):
        yield registry.put_registration(Registration("c.example", "b@example.org", foreign_id="+1555"))
    # another component may use the same identity, and a user without one is fine
    yield registry.put_registration(Registration("d.example", "b@example.org", foreign_id="+1555"))
    yield registry.put_registration(Registration("c.example", "c@example.org"))
    yield registry.put_registration(Registration("c.example", "d@example.org"))
    assert (yield registry.count_registrations("c.example")) == 3


@pytest_twisted.inlineCallbacks
def test_update_subscription_and_delete_removes_user_data(registry):
    yield registry.put_registration(Registration("c.example", "u@example.org", settings={"a": 1}))
    yield registry.set_subscribed("c.example", "u@example.org", False)
    assert (yield registry.get_registration("c.example", "u@example.org")).subscribed is False
    yield registry.put_message_id("c.example", "u@example.org", "x1", "f1", "contact")
    yield registry.enqueue(item())
    yield registry.enqueue(item(jid="other@example.org"))
    assert (yield registry.delete_registration("c.example", "u@example.org")) is True
    assert (yield registry.get_registration("c.example", "u@example.org")) is None
    assert (yield registry.message_by_foreign_id("c.example", "f1")) is None
    assert (yield registry.queue_depth("c.example")) == {"out": 1, "in": 0, "parked": 0}
    assert (yield registry.delete_registration("c.example", "u@example.org")) is False


@pytest_twisted.inlineCallbacks
def test_message_ids_both_ways(registry):
    yield registry.put_message_id("c.example", "u@example.org", "xmpp-1", "SM123", "+1555", "phone", True)
    assert (yield registry.message_by_foreign_id("c.example", "SM123")) == ("u@example.org", "xmpp-1", "+1555",
                                                                            "phone", True)
    assert (yield registry.foreign_id_for("c.example", "u@example.org", "xmpp-1")) == "SM123"
    yield registry.purge("message_ids", 10**12)
    assert (yield registry.foreign_id_for("c.example", "u@example.org", "xmpp-1")) is None


@pytest_twisted.inlineCallbacks
def test_address_map(registry):
    yield registry.put_address("c.example", "Some Long Address", "addr1")
    assert (yield registry.address_for_localpart("c.example", "addr1")) == "Some Long Address"
    assert (yield registry.localpart_for_address("c.example", "Some Long Address")) == "addr1"
    assert (yield registry.localpart_for_address("c.example", "nope")) is None


@pytest_twisted.inlineCallbacks
def test_queue_claim_release_finish(registry):
    for n in range(3):
        yield registry.enqueue(item(n=n), claimed=False)
    yield registry.enqueue(item(n=9, direction="in"), claimed=False)
    claimed = yield registry.claim("c.example", "out", limit=2)
    assert [i.payload["body"] for i in claimed] == ["m0", "m1"]
    again = yield registry.claim("c.example", "out", limit=10)
    assert [i.payload["body"] for i in again] == ["m2"]          # claimed rows are not handed out twice
    assert (yield registry.claim("c.example", "out")) == []
    yield registry.release(claimed[0], next_attempt=0, attempts=1, error="boom")
    retried = yield registry.claim("c.example", "out")
    assert [(i.payload["body"], i.attempts) for i in retried] == [("m0", 1)]
    yield registry.release(claimed[1], next_attempt=10**12, attempts=1)
    assert (yield registry.claim("c.example", "out")) == []      # not yet due
    assert (yield registry.finish(claimed[0])) == 0               # fenced: retried under another claim
    for i in retried + again:
        assert (yield registry.finish(i)) == 1
    assert (yield registry.queue_depth("c.example")) == {"out": 1, "in": 1, "parked": 0}
    inbound = yield registry.claim("c.example", "in")
    assert [i.payload["body"] for i in inbound] == ["m9"]


@pytest_twisted.inlineCallbacks
def test_expired_claims_are_taken_over(registry):
    yield registry.enqueue(item(n=1))                            # claimed by us at once
    assert (yield registry.claim("c.example", "out")) == []
    later = yield registry.claim("c.example", "out", now=__import__("time").time() + 61)
    assert len(later) == 1


@pytest_twisted.inlineCallbacks
def test_restart_takes_back_own_claims_and_keeps_data(registry):
    yield registry.start_instance("host-a", 2**22 + 19)      # a pid no process has
    yield registry.enqueue(item(n=1))
    yield registry.put_registration(Registration("c.example", "u@example.org"))
    registry.close()
    yield registry.open()                                        # the CLI opening it changes no claim
    assert (yield registry.schema_version()) == max(version for version, _ in MIGRATIONS)
    assert (yield registry.claim("c.example", "out")) == []
    yield registry.start_instance("host-a", 2**22 + 17)          # a restart: the old pid is gone
    assert len((yield registry.claim("c.example", "out"))) == 1
    assert (yield registry.get_registration("c.example", "u@example.org")) is not None


@pytest_twisted.inlineCallbacks
def test_a_live_instance_id_is_refused(registry):
    import os

    from gateway.registry import InstanceConflict

    yield registry.start_instance("host-a", os.getppid())        # a live process (our parent) holds the id
    with pytest.raises(InstanceConflict):
        yield registry.start_instance("host-a", os.getpid())
    with pytest.raises(InstanceConflict):
        yield registry.start_instance("host-b", os.getpid())    # alive elsewhere: its heartbeat is fresh
    yield registry.stop_instance()
    yield registry.start_instance("host-b", os.getpid())        # a clean stop frees it


@pytest_twisted.inlineCallbacks
def test_a_lease_taken_over_fences_the_old_owner_out(registry):
    """A process whose lease ran out can neither send (hold), finish, release nor park the row."""
    import time

    yield registry.enqueue(item(n=1))
    mine = (yield registry.claim("c.example", "out", now=time.time() + 61))[0]   # our first lease ran out
    other = SQLRegistry(registry.url if registry.dialect == "postgresql" else f"sqlite:///{registry.path}",
                        KEY, instance_id="test-2", lease=60)
    yield other.open()
    theirs = (yield other.claim("c.example", "out", now=time.time() + 200))[0]   # and then this one's
    assert theirs.id == mine.id and theirs.token != mine.token
    assert (yield registry.hold(mine)) is False
    assert (yield registry.finish(mine)) == 0
    assert (yield registry.release(mine, 0, 1)) == 0
    assert (yield registry.park(mine, "x")) == 0
    assert (yield other.hold(theirs, now=time.time() + 200)) is True
    assert (yield other.finish(theirs)) == 1
    other.close()


@pytest_twisted.inlineCallbacks
def test_renewal_keeps_live_leases_only(registry):
    import time

    yield registry.enqueue(item(n=1))
    first = (yield registry.claim("c.example", "out", now=time.time() + 61))[0]     # ours until +121
    held = registry.held_rows("c.example")                  # what an outbox works on: only that is renewed
    held[first.id] = first
    assert not registry.owns(first, margin=30, now=time.time() + 100)
    yield registry.renew(now=time.time() + 100)                  # renews the live claim taken at +61
    assert registry.owns(first, margin=30, now=time.time() + 120)                   # now until +160
    assert (yield registry.claim("c.example", "out", now=time.time() + 150)) == []   # renewed: not free yet
    second = item(n=2)
    yield registry.enqueue(second)
    held[second.id] = second
    other = SQLRegistry(registry.url if registry.dialect == "postgresql" else f"sqlite:///{registry.path}",
                        KEY, instance_id="test-2", lease=60)
    yield other.open()
    taken = (yield other.claim("c.example", "out", now=time.time() + 65))          # n=2's lease ran out
    assert [i.id for i in taken] == [item(n=2).id]
    yield registry.renew(now=time.time() + 70)
    assert (first.id, first.token) in registry.renewed_ids
    assert second.id not in {i for i, _ in registry.renewed_ids}                     # not ours any more
    assert not registry.owns(second, margin=1, now=time.time() + 70)
    stray = item(n=3)
    yield registry.enqueue(stray)                           # claimed, but no outbox works on it
    yield registry.renew(now=time.time() + 10)
    assert (stray.id, stray.token) not in registry.renewed_ids                       # so its lease lapses
    other.close()


@pytest_twisted.inlineCallbacks
def test_parked_rows_wait_for_the_operator(registry):
    yield registry.enqueue(item(n=1, direction="in"))
    yield registry.enqueue(item(n=2, direction="in"), claimed=False)
    mine = (yield registry.claim("c.example", "in", now=__import__("time").time() + 61))
    poison = next(i for i in mine if i.payload["body"] == "m1")
    assert (yield registry.park(poison, "OverflowError: cannot convert float infinity")) == 1
    assert (yield registry.queue_depth("c.example")) == {"out": 0, "in": 1, "parked": 1}
    assert (yield registry.claim("c.example", "in", now=__import__("time").time() + 300)) != []
    parked = yield registry.list_queue(parked_only=True)
    assert [(p.id, p.last_error) for p in parked] == [(poison.id, "OverflowError: cannot convert float infinity")]
    assert (yield registry.retry_parked([poison.id, "nope"])) == 1
    assert (yield registry.queue_depth("c.example"))["parked"] == 0
    again = yield registry.claim("c.example", "in", now=__import__("time").time() + 600)
    assert poison.id in [i.id for i in again]
    yield registry.park(next(i for i in again if i.id == poison.id), "still bad")
    assert (yield registry.drop([poison.id])) == 1
    assert (yield registry.list_queue(parked_only=True)) == []


@pytest_twisted.inlineCallbacks
def test_foreign_ids_are_accepted_once(registry):
    assert (yield registry.enqueue_all([item(n=1, direction="in")], ["twilio:SM1"])) == [True]
    assert (yield registry.enqueue_all([item(n=2, direction="in"), item(n=4, direction="in")],
                                       ["twilio:SM1", None])) == [False, True]     # the key and the row commit together
    assert (yield registry.queue_depth("c.example"))["in"] == 2
    yield registry.purge("seen", 10**12)
    assert (yield registry.enqueue_all([item(n=3, direction="in")], ["twilio:SM1"])) == [True]


@pytest_twisted.inlineCallbacks
def test_enqueue_all_is_all_or_nothing(registry):
    yield registry.enqueue(item(n=2, direction="in"))
    with pytest.raises(Exception):
        yield registry.enqueue_all([item(n=1, direction="in"), item(n=2, direction="in")])  # 2 exists: fails
    assert (yield registry.queue_depth("c.example"))["in"] == 1
    yield registry.enqueue_all([item(n=1, direction="in"), item(n=3, direction="in")])
    assert (yield registry.queue_depth("c.example"))["in"] == 3


@pytest_twisted.inlineCallbacks
def test_thread_records_commit_with_their_messages_or_not_at_all(registry):
    """enqueue_all's ``threads`` are part of its transaction, on both databases (issue 11)."""
    record = ("c.example", "u@example.org", "root@x", "<m1@x>", "hi")
    yield registry.enqueue(item(n=2, direction="in"))
    with pytest.raises(Exception):
        yield registry.enqueue_all([item(n=1, direction="in"), item(n=2, direction="in")], threads=[record])
    assert (yield registry.thread_of("c.example", "u@example.org", ["<m1@x>"])) is None
    assert (yield registry.enqueue_all([item(n=1, direction="in")], ["k1"], threads=[record])) == [True]
    assert (yield registry.thread_of("c.example", "u@example.org", ["<m1@x>"])) == "root@x"
    # A repeat (same key, same record): acknowledged, nothing new, no error.
    assert (yield registry.enqueue_all([item(n=3, direction="in")], ["k1"], threads=[record])) == [False]
    assert (yield registry.thread_messages("c.example", "u@example.org", "root@x")) == [("<m1@x>", "hi")]


@pytest_twisted.inlineCallbacks
def test_export_import_round_trip(registry, fresh_dir):
    yield registry.put_registration(Registration("c.example", "u@example.org", "+1", {"k": "v"}, {"pw": "s3cret"}))
    rows = yield registry.export()
    other = SQLRegistry(f"sqlite:///{fresh_dir}/other.sqlite", KEY)
    yield other.open()
    assert (yield other.import_(rows)) == 1
    got = yield other.get_registration("c.example", "u@example.org")
    assert (got.foreign_id, got.settings, got.secrets) == ("+1", {"k": "v"}, {"pw": "s3cret"})
    wrong = SQLRegistry(f"sqlite:///{fresh_dir}/wrong.sqlite", SecretBox.generate())
    yield wrong.open()
    with pytest.raises(KeyError_):
        yield wrong.import_(rows)
    other.close()
    wrong.close()


@pytest.fixture
def pg_registry(postgresql):
    reg = SQLRegistry(postgresql.create_database(f"reg{next(_dbs)}"), KEY, instance_id="test-1", lease=60)
    pytest_twisted.blockon(reg.open())
    yield reg
    reg.close()


@pytest_twisted.inlineCallbacks
def test_two_claimers_never_share_a_row(pg_registry):
    """Two processes (different instance ids) claiming one PostgreSQL queue at once split it without overlap."""
    registry = pg_registry
    for n in range(40):
        yield registry.enqueue(item(n=n), claimed=False)
    second = SQLRegistry(registry.url, KEY, instance_id="test-2")
    yield second.open()
    results = yield defer.gatherResults([
        (registry if i % 2 else second).claim("c.example", "out", limit=5) for i in range(12)])
    ids = [it.id for batch in results for it in batch]
    assert len(ids) == 40 and len(set(ids)) == 40
    second.close()


@pytest_twisted.inlineCallbacks
def test_counters_are_atomic_per_period_and_deleted_with_the_user(registry):
    assert (yield registry.counter("c.example", "u@example.org", "sms", "2026-11-22")) == 0
    values = yield defer.gatherResults([registry.add_to_counter("c.example", "u@example.org", "sms", "2026-11-22")
                                        for _ in range(5)])
    assert sorted(values) == [1, 2, 3, 4, 5]
    assert (yield registry.add_to_counter("c.example", "u@example.org", "sms", "2026-11-22", 3)) == 8
    assert (yield registry.add_to_counter("c.example", "u@example.org", "sms", "2026-11-23")) == 1
    yield registry.purge("counters", "2026-11-23")
    assert (yield registry.counter("c.example", "u@example.org", "sms", "2026-11-22")) == 0
    yield registry.put_registration(Registration("c.example", "u@example.org"))
    yield registry.delete_registration("c.example", "u@example.org")
    assert (yield registry.counter("c.example", "u@example.org", "sms", "2026-11-23")) == 0


@pytest_twisted.inlineCallbacks
def test_threads(registry):
    c, u = "m.example", "u@example.org"
    yield registry.add_to_thread(c, u, "t1", "<a@x>", "Hello")
    yield registry.add_to_thread(c, u, "t1", "<b@x>", "Re: Hello")
    yield registry.add_to_thread(c, u, "t1", "<b@x>", "duplicate ignored")
    yield registry.add_to_thread(c, "other@example.org", "t9", "<c@x>")
    assert (yield registry.thread_messages(c, u, "t1")) == [("<a@x>", "Hello"), ("<b@x>", "Re: Hello")]
    assert (yield registry.thread_of(c, u, ["<zz@x>", "<b@x>"])) == "t1"
    assert (yield registry.thread_of(c, u, ["<c@x>"])) is None          # another user's thread
    assert (yield registry.thread_of(c, u, [])) is None


def test_both_implementations_provide_the_interface(registry):
    from zope.interface.verify import verifyObject

    from gateway.interfaces import IRegistry

    assert verifyObject(IRegistry, registry)


@pytest_twisted.inlineCallbacks
def test_unconfirmed_messages_are_reported_once_unless_confirmed(registry):
    import time

    c, u = "c.example", "u@example.org"
    yield registry.put_message_id(c, u, "x1", "gw-1", "+1555", "phone", False, verdict_by=time.time() - 1)
    yield registry.put_message_id(c, u, "x2", "gw-2", "+1555", None, False, verdict_by=time.time() - 1)
    yield registry.put_message_id(c, u, "x3", "gw-3", "+1555", None, False, verdict_by=time.time() + 600)
    yield registry.put_message_id(c, u, "x4", "gw-4", "+1555")                   # no watch at all
    yield registry.confirm_message(c, "gw-2")                                      # the provider spoke
    assert (yield registry.overdue_messages(c)) == [(u, "x1", "+1555", "phone")]
    assert (yield registry.overdue_messages(c)) == []                              # taken once
    assert (yield registry.overdue_messages(c, now=time.time() + 700)) == [(u, "x3", "+1555", None)]
    # A status that overtook the send's lost answer: the record written afterwards is not watched.
    yield registry.confirm_message(c, "gw-5")
    yield registry.put_message_id(c, u, "x5", "gw-5", "+1555", None, False, verdict_by=time.time() - 1)
    assert (yield registry.overdue_messages(c)) == []


@pytest_twisted.inlineCallbacks
def test_retention_purges_old_bookkeeping_in_batches_and_keeps_the_rest(registry):
    """Old rows of every bookkeeping table go, in batches smaller than the backlog; young ones and rows awaiting a verdict stay."""
    import time as _time

    from gateway.registry.retention import Retention

    now = _time.time()
    old, young = now - 40 * 86400, now - 86400
    for n in range(5):
        yield registry.put_message_id("c.example", "u@example.org", f"old-{n}", f"F-old-{n}", "+1555", None, False)
        yield registry.add_to_thread("c.example", "u@example.org", "t1", f"<old-{n}@x>")
        yield registry.add_to_counter("c.example", "u@example.org", "sms", f"2020-01-0{n + 1}")
    yield registry.put_message_id("c.example", "u@example.org", "young", "F-young", "+1555", None, False)
    yield registry.put_message_id("c.example", "u@example.org", "waiting", "F-waiting", "+1555", None, False)
    yield registry.add_to_thread("c.example", "u@example.org", "t1", "<young@x>")
    today = _time.strftime("%Y-%m-%d", _time.gmtime(now))
    yield registry.add_to_counter("c.example", "u@example.org", "sms", today)
    yield registry.enqueue_all([item(n=1, direction="in")], ["old-key"])
    yield registry.enqueue_all([item(n=2, direction="in")], ["young-key"])
    # Age them (the rows were written now).
    yield registry._op("UPDATE message_ids SET created_at = ? WHERE xmpp_id LIKE ?", (old, "old-%"))
    yield registry._op("UPDATE message_ids SET created_at = ?, verdict_by = ? WHERE xmpp_id = ?",
                       (old, now + 60, "waiting"))
    yield registry._op("UPDATE message_ids SET created_at = ? WHERE xmpp_id = ?", (young, "young"))
    yield registry._op("UPDATE threads SET created_at = ? WHERE message_id LIKE ?", (now - 100 * 86400, "<old-%"))
    yield registry._op("UPDATE seen SET created_at = ? WHERE key = ?", (now - 8 * 86400, "old-key"))

    job = Retention(registry, {"interval": 3600.0, "message_ids_days": 30.0, "threads_days": 90.0,
                               "counters_days": 2.0, "seen_days": 7.0, "batch": 2}, clock=None)
    job.running = True
    purged = yield job.run()
    assert purged == {"message_ids": 5, "threads": 5, "counters": 5, "seen": 1}
    rows = yield registry._run("SELECT xmpp_id FROM message_ids ORDER BY xmpp_id", ())
    assert [r[0] for r in rows] == ["waiting", "young"]
    assert (yield registry.thread_of("c.example", "u@example.org", ["<young@x>"])) == "t1"
    assert (yield registry.thread_of("c.example", "u@example.org", ["<old-0@x>"])) is None
    assert (yield registry.counter("c.example", "u@example.org", "sms", today)) == 1
    assert (yield registry.counter("c.example", "u@example.org", "sms", "2020-01-01")) == 0
    # The young key still drops a replay; the old one no longer does.
    assert (yield registry.enqueue_all([item(n=3, direction="in")], ["young-key"])) == [False]
    assert (yield registry.enqueue_all([item(n=4, direction="in")], ["old-key"])) == [True]
    assert (yield job.run()) == {"message_ids": 0, "threads": 0, "counters": 0, "seen": 0}
