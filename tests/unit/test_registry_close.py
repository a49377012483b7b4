"""
Closing the registry while a group commit is in flight (the service stops right
after a bridge's last write: a claim released, a delivered row deleted). The
pool used to be thrown away at once: the in-flight transaction's callback then
flushed the writes waiting behind it into ``None.runInteraction``, an error
in the log, and those writes never happened. Now close() waits for what was
asked before it, and a write asked after it fails with a clear error.
"""

import pytest
import pytest_twisted
from twisted.internet import defer

from gateway.registry import QueueItem, RegistryClosed, SQLRegistry
from gateway.registry.crypto import SecretBox

KEY = SecretBox.generate()


def item(n: int) -> QueueItem:
    return QueueItem(id=f"row-{n}", component="c.example", jid="u@example.org", direction="out",
                     payload={"body": f"m{n}"}, attempts=0, deadline=10**12, created_at=1000.0 + n)


@pytest.fixture
def url(fresh_dir):
    return f"sqlite:///{fresh_dir}/registry.sqlite"


@pytest_twisted.inlineCallbacks
def test_close_waits_for_the_writes_already_asked(url):
    reg = SQLRegistry(url, KEY, instance_id="test-close", lease=60)
    yield reg.open()
    first = reg.enqueue(item(0))                       # in flight
    behind = [reg.enqueue(item(n)) for n in range(1, 6)]   # waiting for the next transaction
    assert reg._batch.busy and reg._batch.pending
    closed = reg.close()
    yield defer.gatherResults([first] + behind)
    yield closed
    assert reg.pool is None
    again = SQLRegistry(url, KEY, instance_id="test-close-2", lease=60)
    yield again.open()
    try:
        rows = yield again._run("SELECT COUNT(*) FROM queue")
        assert rows[0][0] == 6
    finally:
        yield again.close()


@pytest_twisted.inlineCallbacks
def test_a_write_asked_after_close_fails_clearly(url):
    reg = SQLRegistry(url, KEY, instance_id="test-close", lease=60)
    yield reg.open()
    first = reg.enqueue(item(0))
    closed = reg.close()
    late = reg.enqueue(item(1))
    yield first
    yield closed
    with pytest.raises(RegistryClosed):
        yield late
    with pytest.raises(RegistryClosed):
        yield reg.enqueue(item(2))
