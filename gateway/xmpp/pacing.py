"""
Room output paced per component stream, with the occupant presences a big
room makes coalesced where XEP-0045 allows.

Why: N gateway users in one IRC channel get N² occupant presences (each user
one per member, each join one to every earlier member). Written as fast as the
IRC side produces them, they fill the component stream: the server takes
seconds to read what is buffered, our keepalive's answer waits behind it, and
the server's own CPU goes to routing presences. Here room events wait in one
FIFO queue per output and leave it within a byte budget per second
(``room_pacing_bytes``) and only while the server has taken all but
``room_pacing_backlog`` bytes of what was written on the stream, so a ping or
a user's message written meanwhile is never far behind.

What the queue may merge (XEP-0045 §7.2: a client keeps the latest presence
of each occupant, so only the latest state matters):

- A *plain* occupant presence (someone else's: not the user's own, no nick
  change, no kick, no shutdown notice) replaces the pending plain presence of
  the same occupant to the same user resources in the same room, in that
  one's place in the queue. So the stream carries at most one pending
  presence per (user resources, room, occupant) between barriers.
- Barriers: a message, a subject, the user's own presence (status 110), a nick
  change, a kick, any event that is not a plain presence. A plain presence
  never merges across a barrier of its user and room: a presence of Alice
  queued before her line stays before it, and her leaving after the line stays
  after it; the user's own presence, which closes a join's occupant list, stays
  after every presence queued before it.
- Messages are never merged or dropped, and keep their order with everything
  else of the same user and room (the queue is one FIFO).

While the stream is down the queue keeps everything (the bridge holds no
room events of its own then) and drains once it is back.

Bound: ``limit`` events. Over it, new plain presences merge with the oldest
pending presence of their occupant even across barriers (the latest state
still arrives; a message may then have seen an occupant's later state); if the
queue still grows, the oldest plain presences are dropped, counted as dropped
room events and logged. Messages and barriers stay, unless the queue holds
nothing else (a long outage of the stream): then the oldest events go,
whatever they are, so that memory stays bounded.

Nothing here blocks: the queue drains from reactor timers.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.logger import Logger

log = Logger(namespace="gateway.xmpp.pacing")

#: Seconds between drains while waiting for the budget or for the server to take our backlog.
TICK = 0.02
#: A budget refill never exceeds this many seconds' worth (the burst).
BURST_SECONDS = 0.1


def plain_presence(event) -> bool:
    """A presence that only says an occupant's state (mergeable), not an event the user must see."""
    return (event.kind == "presence" and not event.own and not event.new_nick and not event.kicked
            and not event.service_stopping and bool(event.nick))


class RoomPacer:
    """
    One output's queue of room events (see the module docstring).
    ``write(event)`` renders and writes one event and returns the bytes it
    wrote; ``ready()`` says whether the stream is up (nothing drains while
    not); ``backlog()`` the bytes written that the server has not taken yet.
    """

    def __init__(self, write: Callable[[object], int], ready: Callable[[], bool], clock, rate: float = 0.0,
                 max_backlog: int = 0, limit: int = 500_000, backlog: Callable[[], int] | None = None,
                 on_drop: Callable[[int], None] | None = None):
        self.write = write
        self.ready = ready
        self.clock = clock
        #: Bytes per second; 0: no rate limit.
        self.rate = float(rate)
        #: Bytes written and not yet taken by the server above which the queue waits; 0: not checked.
        self.max_backlog = max_backlog
        self.limit = max(1, limit)
        self.backlog = backlog
        self.on_drop = on_drop
        #: The FIFO: entries are [event, key, epoch]; a merged or dropped entry has event None.
        self._queue: deque[list] = deque()
        #: Events waiting (entries with an event).
        self.pending = 0
        #: (user, resources, room, nick) -> its pending plain-presence entry.
        self._index: dict[tuple, list] = {}
        #: (user, room) -> barriers queued so far: a presence merges only with one of the same epoch.
        self._epochs: dict[tuple, int] = {}
        #: How many presences were merged into a pending one, and dropped over the bound (for tests and logs).
        self.merged = 0
        self.dropped = 0
        self._tokens = self.rate * BURST_SECONDS
        self._stamp = clock.seconds()
        #: Bytes written since the server's backlog was last looked at.
        self._unchecked = 0
        self._call = None
        self._warned = False

    # -- in --------------------------------------------------------------------

    def put(self, event) -> None:
        """Queue one room event (or write it at once when nothing waits and the budget allows)."""
        if not self._queue and self._call is None and self._wait() is None:
            self._write(event)                   # the usual case in a quiet room: nothing to merge or order
            return
        if plain_presence(event):
            key = (event.user, tuple(event.resources), event.room, event.nick)
            room = (event.user, event.room)
            epoch = self._epochs.get(room, 0)
            entry = self._index.get(key)
            if entry is not None and entry[0] is not None and (entry[2] == epoch or self.pending >= self.limit):
                entry[0] = event                 # the latest state, in the earlier one's place
                self.merged += 1
                return
            entry = [event, key, epoch]
            self._index[key] = entry
        else:
            room = (event.user, event.room)
            if event.kind != "invite":
                self._epochs[room] = self._epochs.get(room, 0) + 1
            entry = [event, None, 0]
        self._queue.append(entry)
        self.pending += 1
        if self.pending > self.limit:
            self._shed()
        if self._call is None:
            self._drain()

    def _shed(self) -> None:
        """
        Over the bound: the oldest plain presences go (counted); messages and
        barriers stay, unless nothing else is left to drop (a long outage of
        the stream: then the oldest events go, whatever they are, so memory
        stays bounded).
        """
        over = self.pending - self.limit
        dropped = 0
        queue = self._queue
        while queue and queue[0][0] is None:
            queue.popleft()                      # merged or dropped entries at the head: gone for good
        for entry in queue:
            if dropped >= over:
                break
            if entry[0] is not None and entry[1] is not None:
                self._forget(entry)
                entry[0] = None
                dropped += 1
        while dropped < over and queue:
            entry = queue.popleft()
            if entry[0] is not None:
                self._forget(entry)
                dropped += 1
        self.pending -= dropped
        self.dropped += dropped
        if dropped:
            if self.on_drop is not None:
                self.on_drop(dropped)
            if not self._warned:
                self._warned = True
                log.warn("room output queue over its bound of {n} events: the oldest occupant presences are "
                         "dropped, and with nothing else left the oldest events (raise [xmpp] room_queue_limit or "
                         "room_pacing_bytes)", n=self.limit)

    def _forget(self, entry: list) -> None:
        key = entry[1]
        if key is not None and self._index.get(key) is entry:
            del self._index[key]

    # -- out -------------------------------------------------------------------

    def _wait(self) -> float | None:
        """None when an event may be written now, else the seconds to wait (the budget refilled first)."""
        if not self.ready():
            return TICK * 10                    # the stream is down: wait for it, keep the queue
        if self.rate > 0:
            now = self.clock.seconds()
            self._tokens = min(self._tokens + (now - self._stamp) * self.rate, max(self.rate * BURST_SECONDS, 1.0))
            self._stamp = now
            if self._tokens <= 0:
                return max(TICK, -self._tokens / self.rate)
        if self.max_backlog and self.backlog is not None and self._unchecked >= self.max_backlog // 8:
            # Asked every eighth of the allowance written (a system call), not for every stanza.
            if self.backlog() > self.max_backlog:
                return TICK
            self._unchecked = 0
        return None

    def _write(self, event) -> None:
        try:
            size = self.write(event)
        except Exception:
            log.failure("room event {kind} in {room} for {user} dropped", kind=event.kind, room=event.room,
                        user=event.user)
            if self.on_drop is not None:
                self.on_drop(1)
            return
        if self.rate > 0:
            self._tokens -= size
        self._unchecked += size

    def _drain(self) -> None:
        self._call = None
        queue = self._queue
        while queue:
            delay = self._wait()
            if delay is not None:
                self._schedule(delay)
                return
            entry = queue.popleft()
            event = entry[0]
            if event is None:
                continue
            self._forget(entry)
            self.pending -= 1
            self._write(event)
        self._epochs.clear()                     # nothing left to merge with: the epochs start again

    def _schedule(self, delay: float) -> None:
        if self._call is None:
            self._call = self.clock.callLater(delay, self._drain)

    def flush(self) -> int:
        """Write everything queued now, whatever the budget (at shutdown, before the stream closes)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        written = 0
        while self._queue:
            entry = self._queue.popleft()
            if entry[0] is None:
                continue
            self._forget(entry)
            self.pending -= 1
            try:
                self.write(entry[0])
                written += 1
            except Exception:
                log.failure("room event dropped at flush")
        self._epochs.clear()
        return written

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


__all__ = ["RoomPacer", "plain_presence"]
