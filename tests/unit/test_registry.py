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

KEY = SecretBox.generate()
_dbs = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, fresh_dir):
    if request.param == "sqlite":
        url = f"sqlite:///{fresh_dir}/registry.sqlite"
    else:
        url = request.getfixturevalue("postgresql").create_database(f"reg{next(_dbs)}")
    reg = SQLRegistry(url, KEY, instance_id="test-1", lease=60)
    pytest_twisted.blockon(reg.open())
    yield reg
    reg.close()


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
    assert (yield registry.queue_depth("c.example")) == {"out": 1, "in": 0}
    assert (yield registry.delete_registration("c.example", "u@example.org")) is False


@pytest_twisted.inlineCallbacks
def test_message_ids_both_ways(registry):
    yield registry.put_message_id("c.example", "u@example.org", "xmpp-1", "SM123", "+1555", "phone", True)
    assert (yield registry.message_by_foreign_id("c.example", "SM123")) == ("u@example.org", "xmpp-1", "+1555",
                                                                            "phone", True)
    assert (yield registry.foreign_id_for("c.example", "u@example.org", "xmpp-1")) == "SM123"
    yield registry.purge_message_ids(older_than=10**12)
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
    yield registry.release(claimed[0].id, next_attempt=0, attempts=1, error="boom")
    retried = yield registry.claim("c.example", "out")
    assert [(i.payload["body"], i.attempts) for i in retried] == [("m0", 1)]
    yield registry.release(claimed[1].id, next_attempt=10**12, attempts=1)
    assert (yield registry.claim("c.example", "out")) == []      # not yet due
    for i in claimed + again:
        yield registry.finish(i.id)
    assert (yield registry.queue_depth("c.example")) == {"out": 0, "in": 1}
    inbound = yield registry.claim("c.example", "in")
    assert [i.payload["body"] for i in inbound] == ["m9"]


@pytest_twisted.inlineCallbacks
def test_expired_claims_are_taken_over(registry):
    yield registry.enqueue(item(n=1))                            # claimed by us at once
    assert (yield registry.claim("c.example", "out")) == []
    later = yield registry.claim("c.example", "out", now=__import__("time").time() + 61)
    assert len(later) == 1


@pytest_twisted.inlineCallbacks
def test_reopen_takes_back_own_claims_and_keeps_data(registry):
    yield registry.enqueue(item(n=1))
    yield registry.put_registration(Registration("c.example", "u@example.org"))
    registry.close()
    yield registry.open()                                        # a restart under the same instance id
    assert (yield registry.schema_version()) == 3
    assert len((yield registry.claim("c.example", "out"))) == 1
    assert (yield registry.get_registration("c.example", "u@example.org")) is not None


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
    yield registry.purge_counters("c.example", "sms", "2026-11-23")
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
