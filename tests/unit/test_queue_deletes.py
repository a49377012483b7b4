"""
The fenced deletes of one group commit go out together (gateway/registry/sql.py
_QueueDeletes), on SQLite and a real PostgreSQL: each caller still learns
whether its row was deleted, a delete never overtakes an earlier write to its
row, and a failing transaction still lets the good deletes through.
"""


import pytest
import pytest_twisted

from gateway.registry import QueueItem
from gateway.registry.crypto import SecretBox
from tests.unit.registries import open_either

KEY = SecretBox.generate()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, fresh_dir):
    return open_either(request, fresh_dir, KEY, "del", "test-del")


def item(n: int) -> QueueItem:
    return QueueItem(id=f"row-{n}", component="c.example", jid="u@example.org", direction="out",
                     payload={"body": f"m{n}"}, attempts=0, deadline=10**12, created_at=1000.0 + n)


def busy(registry):
    """A write in flight: what is asked next waits for the next transaction, together."""
    return registry._batch.add("UPDATE queue SET attempts = attempts WHERE id = ?", ("none",))


@pytest_twisted.inlineCallbacks
def test_the_deletes_of_one_transaction_go_together_and_each_caller_learns_its_outcome(registry):
    items = [item(n) for n in range(6)]
    for i in items:
        yield registry.enqueue(i)
    stale = QueueItem(**{**items[4].__dict__, "token": "not-our-claim"})
    gone = item(99)
    gone.token = "whatever"
    unclaimed = item(50)
    yield registry.enqueue(unclaimed, claimed=False)    # no claim token at all: never ours to delete
    first = busy(registry)
    waiting = len(registry._batch.pending)
    asked = [registry.finish(i) for i in items[:4]] + [registry.finish(stale), registry.finish(gone),
                                                       registry.finish(items[0]), registry.finish(unclaimed)]
    assert len(registry._batch.pending) == waiting + 1          # one group for all eight deletes
    yield first
    results = []
    for d in asked:
        results.append((yield d))
    # Ours deleted; the wrong claim fenced out; an unknown row 0; asked twice: the first one deleted it;
    # a row without a claim is not deleted.
    assert results == [1, 1, 1, 1, 0, 0, 0, 0]
    assert (yield registry.queue_depth("c.example")) == {"out": 3, "in": 0, "parked": 0}


@pytest_twisted.inlineCallbacks
def test_a_delete_never_runs_before_an_earlier_write_to_its_row(registry):
    a, b, c = item(1), item(2), item(3)
    yield registry.enqueue(a)
    yield registry.enqueue(b)
    first = busy(registry)
    done_a = registry.finish(a)                        # the group starts here
    stored_c = registry.enqueue(c)                     # a row written after the group began...
    done_c = registry.finish(c)                        # ...is deleted after that write
    released_b = registry.release(b, next_attempt=0, attempts=1)
    done_b = registry.finish(b)                        # released first, so fenced out (as asked, in order)
    yield first
    assert (yield done_a) == 1
    yield stored_c
    assert (yield done_c) == 1
    assert (yield released_b) == 1
    assert (yield done_b) == 0
    assert (yield registry.queue_depth("c.example")) == {"out": 1, "in": 0, "parked": 0}


@pytest_twisted.inlineCallbacks
def test_more_deletes_than_one_statement_takes(registry):
    items = [item(n) for n in range(450)]
    yield registry.enqueue_all(items)
    first = busy(registry)
    asked = [registry.finish(i) for i in items]
    yield first
    results = []
    for d in asked:
        results.append((yield d))
    assert results == [1] * 450
    assert (yield registry.queue_depth("c.example")) == {"out": 0, "in": 0, "parked": 0}


@pytest_twisted.inlineCallbacks
def test_a_failing_write_in_the_same_transaction_does_not_take_the_deletes_with_it(registry):
    a, b, kept = item(1), item(2), item(3)
    for i in (a, b, kept):
        yield registry.enqueue(i)
    first = busy(registry)
    done_a = registry.finish(a)
    duplicate = registry.enqueue(item(3))             # a row's id again: this write fails
    done_b = registry.finish(b)
    yield first
    assert (yield done_a) == 1
    with pytest.raises(Exception):
        yield duplicate
    assert (yield done_b) == 1
    assert (yield registry.queue_depth("c.example")) == {"out": 1, "in": 0, "parked": 0}
