"""
The inbound barrier's batch is deleted with one ``finish_all`` instead of one
``finish`` (and its chain of Deferreds) per message, on SQLite and a real
PostgreSQL. The fence is the same as one row at a time: a row is deleted only
under our claim, a row another process took over stays (and is counted), and
a row a poll re-claimed for us while the delete waited is still deleted.
"""


import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from gateway import metrics
from gateway.model import InboundMessage
from gateway.registry import QueueItem
from gateway.registry.crypto import SecretBox
from tests.unit.test_outbox_faults import COMP, make
from tests.unit.registries import open_either

KEY = SecretBox.generate()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, fresh_dir):
    return open_either(request, fresh_dir, KEY, "fin", "test-fin")


def item(n: int) -> QueueItem:
    return QueueItem(id=f"row-{n}", component=COMP, jid="u@example.org", direction="in",
                     payload={"body": f"m{n}"}, attempts=0, deadline=10**12, created_at=1000.0 + n)


@defer.inlineCallbacks
def written_and_pinged(reg, ob, out, n: int):
    """Deliver ``n`` messages and wait until the barrier's ping behind the first one is out."""
    messages = [InboundMessage(component=COMP, user="u@example.org", sender=f"s{k}", body=f"b{k}")
                for k in range(n)]
    yield defer.gatherResults([ob.deliver(m) for m in messages])
    for _ in range(200):
        if out.pending and len(out.written) == n:
            break
        yield task.deferLater(reactor, 0.001, lambda: None)
    assert out.written == [m.id for m in messages]
    return messages


@defer.inlineCallbacks
def answer(reg, out, times: int = 50):
    """Answer the barrier's pings as the server does, until none is asked any more."""
    for _ in range(times):
        while out.pending:
            out.pending.pop(0).callback(None)
        yield reg.settled()
        yield task.deferLater(reactor, 0.001, lambda: None)


@pytest_twisted.inlineCallbacks
def test_finish_all_tells_what_finish_would_for_each_row(registry):
    items = [item(n) for n in range(5)]
    for i in items:
        yield registry.enqueue(i)
    stale = QueueItem(**{**items[3].__dict__, "token": "not-our-claim"})
    unknown = item(99)
    unknown.token = "whatever"
    unclaimed = item(50)
    yield registry.enqueue(unclaimed, claimed=False)
    asked = [items[0], items[1], items[2], stale, unknown, items[0], unclaimed, items[4]]
    counts = yield registry.finish_all(asked)
    # Ours deleted; the wrong claim fenced out; an unknown row 0; asked twice: the first one
    # deleted it; a row without a claim is not deleted.
    assert counts == [1, 1, 1, 0, 0, 0, 0, 1]
    assert (yield registry.queue_depth(COMP)) == {"out": 0, "in": 2, "parked": 0}


@pytest_twisted.inlineCallbacks
def test_finish_all_waits_behind_an_earlier_write_to_its_rows(registry):
    a, b = item(1), item(2)
    yield registry.enqueue(a)
    yield registry.enqueue(b)
    busy = registry._batch.add("UPDATE queue SET attempts = attempts WHERE id = ?", ("none",))
    released = registry.release(b, next_attempt=0, attempts=1)   # asked first: takes our claim away
    counts = registry.finish_all([a, b])
    yield busy
    assert (yield released) == 1
    assert (yield counts) == [1, 0]


@pytest_twisted.inlineCallbacks
def test_an_empty_batch_is_no_work(registry):
    assert (yield registry.finish_all([])) == []


@pytest_twisted.inlineCallbacks
def test_the_barrier_finishes_its_batch_in_one_call():
    reg, ob, _adapter, out, _ = yield make(lease=60.0)
    calls = {"finish": 0, "finish_all": []}
    finish, finish_all = reg.finish, getattr(reg, "finish_all", None)

    def counting_finish(i):
        calls["finish"] += 1
        return finish(i)

    def counting_finish_all(items):
        calls["finish_all"].append(len(items))
        return finish_all(items)

    reg.finish, reg.finish_all = counting_finish, counting_finish_all
    try:
        out.auto_barrier = False
        yield written_and_pinged(reg, ob, out, 50)
        yield answer(reg, out)
        # The first message's ping went out alone, the other 49 wait behind the next one: two
        # calls (one per message was 50).
        assert calls["finish"] == 0
        assert calls["finish_all"] == [1, 49]
        assert (yield reg.queue_depth(COMP)) == {"out": 0, "in": 0, "parked": 0}
        assert not ob._active
    finally:
        reg.finish, reg.finish_all = finish, finish_all
        reg.close()


@pytest_twisted.inlineCallbacks
def test_rows_another_process_took_over_stay_and_are_counted():
    reg, ob, _adapter, out, _ = yield make(lease=60.0)
    try:
        out.auto_barrier = False
        messages = yield written_and_pinged(reg, ob, out, 6)
        # Another process takes two rows over (as after our lease ran out): their claim is not ours.
        taken = [messages[1].id, messages[4].id]
        yield reg._interaction(lambda txn: txn.execute(
            "UPDATE queue SET claim_token = 'theirs', claimed_by = 'B' WHERE id IN (?, ?)", taken))
        fenced = metrics.FENCED.labels(COMP)._value.get()
        yield answer(reg, out)
        rows = yield reg._interaction(lambda txn: txn.execute("SELECT id FROM queue").fetchall())
        assert sorted(r[0] for r in rows) == sorted(taken)
        assert metrics.FENCED.labels(COMP)._value.get() == fenced + 2
    finally:
        reg.close()


@pytest_twisted.inlineCallbacks
def test_a_row_re_claimed_for_us_while_the_delete_waited_is_still_deleted():
    reg, ob, _adapter, out, _ = yield make(lease=60.0)
    try:
        out.auto_barrier = False
        messages = yield written_and_pinged(reg, ob, out, 3)
        out.pending.pop().callback(None)            # the first message's ping
        for _ in range(200):
            if out.pending:
                break
            yield task.deferLater(reactor, 0.001, lambda: None)
        yield reg.settled()
        # The batcher is busy, so the barrier's delete waits; meanwhile a poll re-claims row 1 for
        # us under a new token (its lease had run out) and adopts it: the first delete is fenced
        # out by the token change, and the outbox asks again under the new claim.
        target = ob._active[messages[1].id]
        busy = reg._batch.add("UPDATE queue SET attempts = attempts WHERE id = ?", ("none",))
        out.pending.pop().callback(None)
        yield reg._interaction(lambda txn: txn.execute(
            "UPDATE queue SET claim_token = 'new-for-us' WHERE id = ?", (messages[1].id,)))
        target.token = "new-for-us"
        yield busy
        yield answer(reg, out)
        assert (yield reg.queue_depth(COMP)) == {"out": 0, "in": 0, "parked": 0}
    finally:
        reg.close()


@pytest_twisted.inlineCallbacks
def test_a_failing_write_in_the_same_transaction_does_not_take_the_batch_with_it(registry):
    a, b, kept = item(1), item(2), item(3)
    for i in (a, b, kept):
        yield registry.enqueue(i)
    busy = registry._batch.add("UPDATE queue SET attempts = attempts WHERE id = ?", ("none",))
    done = registry.finish_all([a, b])
    duplicate = registry.enqueue(item(3))             # a row's id again: this write fails
    yield busy
    with pytest.raises(Exception):
        yield duplicate
    assert (yield done) == [1, 1]
    assert (yield registry.queue_depth(COMP)) == {"out": 0, "in": 1, "parked": 0}
