"""
One keepalive timer for all the IRC connections of an adapter.

Twisted's IRCClient starts a LoopingCall per connection after the welcome, to
send ``PING`` every ``heartbeatInterval`` seconds: with its DelayedCall that is
about 650 bytes per connection, and one timer per user in the reactor's heap.
A gateway holds one connection per user and server, so here a single timer
(a "wheel") ticks about once a second over ``interval / tick`` buckets; a
connection sits in the bucket the hand is on when it signs on, and is pinged
each time the hand comes back to it: every ``interval`` seconds, as before,
and connections that signed on at different moments are pinged at different
ticks. Adding and removing a connection are O(1); the timer runs only while
some connection is in the wheel.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger(namespace="gateway.adapters.irc")

#: Seconds between two ticks of the wheel (rounded so that a whole number of ticks makes the interval).
TICK = 1.0


class Beating(Protocol):
    """What the wheel needs of a connection: its PING, and a slot for the bucket it sits in."""

    _beat: int | None

    def _sendHeartbeat(self) -> None: ...


class HeartbeatWheel:
    """
    Calls ``_sendHeartbeat()`` of each connection added, every ``interval``
    seconds of ``clock``, from one LoopingCall over ``interval / TICK``
    buckets. The first PING of a connection goes between ``interval - tick``
    and ``interval`` seconds after it was added (the hand moves by whole ticks).
    """

    def __init__(self, clock: IReactorTime, interval: float):
        self.clock = clock
        self.interval = float(interval)
        self._slots = max(1, int(self.interval // TICK))
        self.tick = self.interval / self._slots
        # A dict per bucket (insertion ordered, O(1) removal): connections hash by identity.
        self._buckets: list[dict[Any, None]] = [{} for _ in range(self._slots)]
        #: The bucket fired last: a connection added now is next pinged when the hand returns to it.
        self._hand = 0
        self._count = 0
        self._loop: task.LoopingCall | None = None

    def __len__(self) -> int:
        return self._count

    def add(self, conn: Beating) -> None:
        """Ping ``conn`` every interval from now on (once: adding it again moves it)."""
        self.remove(conn)
        self._buckets[self._hand][conn] = None
        conn._beat = self._hand
        self._count += 1
        if self._loop is None:
            self._loop = task.LoopingCall.withCount(self._advance)
            self._loop.clock = self.clock
            self._loop.start(self.tick, now=False)

    def remove(self, conn: Beating) -> None:
        """No more PINGs for ``conn`` (nothing happens when it is not in the wheel)."""
        index, conn._beat = conn._beat, None
        if index is None or conn not in self._buckets[index]:
            return
        del self._buckets[index][conn]
        self._count -= 1
        if not self._count and self._loop is not None:
            loop, self._loop = self._loop, None
            loop.stop()              # an idle adapter keeps no timer

    def _advance(self, ticks: int) -> None:
        """``ticks`` ticks went by (more than one when the reactor was late): fire each bucket passed once."""
        for _ in range(min(ticks, self._slots)):
            self._hand = (self._hand + 1) % self._slots
            # A copy: a PING may fail and end the connection, which removes it from this bucket.
            for conn in list(self._buckets[self._hand]):
                try:
                    conn._sendHeartbeat()
                except Exception:
                    log.failure("keepalive PING failed")
        if ticks > self._slots:
            self._hand = (self._hand + ticks - self._slots) % self._slots
