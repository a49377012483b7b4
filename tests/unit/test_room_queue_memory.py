"""
Room events queued toward XMPP are the heap of a reconnect storm: thousands of
users rejoin at once and every join queues one occupant presence per member
while the component stream drains at its paced rate. What one queued presence
costs bounds how far a storm can grow the heap, so the bytes are measured here
(tracemalloc, the strings made beforehand as the member tables hold them).
"""

import tracemalloc

from twisted.internet import task

from gateway.model import RoomEvent
from gateway.xmpp.pacing import RoomPacer

N = 2000
#: Bytes per queued occupant presence (event, its resources list, the queue entry and its index key).
#: An event with a __dict__ costs about 2.1 KiB here; with __slots__ about 0.75 KiB.
BOUND = 1100


def _queued_bytes(n: int) -> float:
    nicks = [f"nick{i}" for i in range(n)]
    hosts = [f"host{i}.example.net" for i in range(n)]
    pacer = RoomPacer(lambda event: 100, lambda: False, task.Clock(), limit=10 * n)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            pacer.put(RoomEvent(component="irc.example.org", user="alice@example.org", resources=["phone"],
                                room="#big%irc.example.net", kind="presence", nick=nicks[i], role="participant",
                                occupant_user="~u", occupant_host=hosts[i]))
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert pacer.pending == n            # all of them held: the stream is down
    return (after - before) / n


def test_queued_presence_bytes_bounded():
    per_event = _queued_bytes(N)
    assert per_event < BOUND, f"{per_event:.0f} bytes per queued presence (bound {BOUND})"


def test_room_event_has_no_instance_dict():
    """A field added later must be declared: an event with a __dict__ costs its size again."""
    event = RoomEvent(component="c", user="u", resources=[], room="r", kind="presence")
    assert not hasattr(event, "__dict__")
