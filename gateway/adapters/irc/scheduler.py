"""
Connection scheduling for the whole IRC adapter: every attempt to connect to an
IRC server, first connects and reconnects alike, is drawn from one scheduler.

Why: when an IRC server restarts with thousands of our users on it, every
session used to retry in the same half second. ngircd's listen backlog (10)
then drops handshakes, some connections end half open, and users are retried
forever. Here each server (its host and port: two names for one listener
share the limits) gets

- a limit of attempts in flight at once (``concurrent``): TCP connecting, TLS,
  CAP/SASL, up to the welcome (``001``), so registrations never pile up;
- a connect rate (``rate`` attempts per second, a token bucket holding one
  token, so attempts are at least ``1/rate`` seconds apart): a storm becomes
  a paced queue;
- an optional cap on connections in total (``max_connections``: attempts in
  flight plus signed-on connections; 0 is no cap), beyond which users wait in
  line and are told so;
- backpressure from the XMPP side (``backlog``, ``backlog_limit``): while more
  room events wait toward XMPP than the bound, no new attempt starts (at any
  server). Each rejoin queues an occupant presence per member and the
  component stream drains at its paced rate, so without it a storm grows the
  heap as fast as servers welcome users. The queue is looked at again every
  ``BACKLOG_RECHECK`` seconds while over (the only wake-up that is a poll: the
  queue drains from its own timers and tells nobody).

Waiting tickets are served round robin between users (a user holding several
tickets for one host cannot starve the others), and users with an XMPP client
online (resources in a room) before users with none (persistent sessions):
those who would see the delay come first.

Everything runs on the reactor's clock (a ``twisted.internet.task.Clock`` in
the unit tests): nothing blocks, nothing polls.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from typing import Callable

from twisted.logger import Logger

log = Logger(namespace="gateway.adapters.irc.scheduler")

WAITING, ATTEMPTING, CONNECTED, DONE = "waiting", "attempting", "connected", "done"
#: Seconds between looks at the XMPP-side room queue while it is over its bound.
BACKLOG_RECHECK = 0.25


def backoff(failures: int, initial: float, maximum: float, rand: Callable[[], float] = random.random) -> float:
    """
    Seconds to wait before attempt ``failures + 1``: exponential (``initial``
    doubled per failure, at most ``maximum``) with "equal jitter" (somewhere in
    the upper half), so sessions that failed together do not come back together.
    """
    delay = min(maximum, initial * 2 ** max(0, failures - 1))
    return delay / 2 + rand() * delay / 2


class Ticket:
    """
    One session's place with the scheduler for one attempt: waiting, then
    attempting (``start`` was called), then connected (``signed_on``), until
    ``release``. A session holds at most one ticket at a time.
    """

    def __init__(self, host: "_Host", user: str, start: Callable[["Ticket"], None], online: Callable[[], bool]):
        self._host = host
        self.user = user
        self._start = start
        self.online = online
        self.state = WAITING

    @property
    def waiting(self) -> bool:
        return self.state == WAITING

    def position(self) -> int | None:
        """1 for the next ticket to be served at this host, None once not waiting."""
        return self._host.position(self) if self.state == WAITING else None

    def queue_length(self) -> int:
        return self._host.waiting

    def capped(self) -> bool:
        """Waiting because the host's cap on connections is reached (not just for a turn)."""
        return self.state == WAITING and self._host.full()

    def signed_on(self) -> None:
        """The server welcomed us: the attempt no longer counts as in flight (it still counts towards the cap)."""
        if self.state == ATTEMPTING:
            self._host.attempting.discard(self)
            self._host.connected.add(self)
            self.state = CONNECTED
            self._host.pump()

    def release(self) -> None:
        """Done with it (attempt failed, connection lost or closed, user gone): frees its place."""
        state, self.state = self.state, DONE
        host = self._host
        if state == WAITING:
            host.remove(self)
        elif state == ATTEMPTING:
            host.attempting.discard(self)
        elif state == CONNECTED:
            host.connected.discard(self)
        if state != DONE:
            host.pump()


class _Host:
    """The queue and the counters of one IRC server."""

    def __init__(self, scheduler: "ConnectScheduler", key: str):
        self.scheduler = scheduler
        self.key = key
        #: user -> their waiting tickets; the order of the keys is the round-robin order.
        self.queue: OrderedDict[str, deque[Ticket]] = OrderedDict()
        self.waiting = 0
        self.attempting: set[Ticket] = set()
        self.connected: set[Ticket] = set()
        self.tokens = 1.0
        self.last = scheduler.clock.seconds()
        self.timer = None
        self._pumping = False

    def full(self) -> bool:
        cap = self.scheduler.max_connections
        return bool(cap) and len(self.attempting) + len(self.connected) >= cap

    def add(self, ticket: Ticket) -> None:
        self.queue.setdefault(ticket.user, deque()).append(ticket)
        self.waiting += 1
        self.pump()

    def remove(self, ticket: Ticket) -> None:
        tickets = self.queue.get(ticket.user)
        if tickets is not None and ticket in tickets:
            tickets.remove(ticket)
            self.waiting -= 1
            if not tickets:
                del self.queue[ticket.user]

    def order(self) -> list[Ticket]:
        """Waiting tickets in the order they would be served (online users first, round robin)."""
        online, offline = [], []
        lanes = [list(t) for t in self.queue.values()]
        depth = 0
        while True:
            found = False
            for lane in lanes:
                if depth < len(lane):
                    found = True
                    (online if lane[depth].online() else offline).append(lane[depth])
            if not found:
                return online + offline
            depth += 1

    def position(self, ticket: Ticket) -> int | None:
        try:
            return self.order().index(ticket) + 1
        except ValueError:
            return None

    def _next(self) -> Ticket | None:
        """The first waiting ticket of the first user with a client online, else of the first user; rotated."""
        chosen = None
        for user, tickets in self.queue.items():
            if tickets[0].online():
                chosen = user
                break
        if chosen is None:
            chosen = next(iter(self.queue))
        tickets = self.queue[chosen]
        ticket = tickets.popleft()
        self.waiting -= 1
        del self.queue[chosen]
        if tickets:
            self.queue[chosen] = tickets                 # to the back of the line: round robin
        return ticket

    def pump(self) -> None:
        """Start as many waiting tickets as the limits allow now; wake up when the bucket has a token again."""
        if self._pumping:
            return                                     # a start() below released a ticket: the loop goes on
        self._pumping = True
        try:
            s = self.scheduler
            while self.queue and len(self.attempting) < s.concurrent and not self.full():
                if s.backed_up():
                    if self.timer is None or not self.timer.active():
                        self.timer = s.clock.callLater(BACKLOG_RECHECK, self._wake)
                    break
                if s.rate > 0:
                    now = s.clock.seconds()
                    self.tokens = min(1.0, self.tokens + max(0.0, now - self.last) * s.rate)
                    self.last = now
                    if self.tokens < 1.0 - 1e-9:          # (float error must not cost a turn)
                        if self.timer is None or not self.timer.active():
                            self.timer = s.clock.callLater((1.0 - self.tokens) / s.rate, self._wake)
                        break
                    self.tokens = max(0.0, self.tokens - 1.0)
                ticket = self._next()
                ticket.state = ATTEMPTING
                self.attempting.add(ticket)
                s.attempts += 1
                try:
                    ticket._start(ticket)
                except Exception:
                    log.failure("starting a connection attempt to {host} failed", host=self.key)
                    ticket.release()
        finally:
            self._pumping = False
        s = self.scheduler
        if not self.queue and not self.attempting and not self.connected and (
                s.rate <= 0 or self.tokens + (s.clock.seconds() - self.last) * s.rate >= 1.0):
            # Idle, and the bucket is full again: nothing left to remember about this server.
            if self.timer is not None and self.timer.active():
                self.timer.cancel()
            if s.hosts.get(self.key) is self:
                del s.hosts[self.key]

    def _wake(self) -> None:
        self.timer = None
        self.pump()


class ConnectScheduler:
    """
    The adapter's one scheduler. ``request`` queues an attempt; ``start`` is
    called (from the reactor) when it is the ticket's turn, and the session
    then reports back through the ticket.
    """

    def __init__(self, clock, concurrent: int = 4, rate: float = 5.0, max_connections: int = 0,
                 backlog: Callable[[], int] | None = None, backlog_limit: int = 0):
        self.clock = clock
        #: Room events waiting toward XMPP now (IAdapterContext.room_backlog), and the bound over
        #: which no attempt starts (0: not checked).
        self.backlog = backlog
        self.backlog_limit = backlog_limit
        self.concurrent = max(1, concurrent)
        self.rate = rate
        self.max_connections = max_connections
        self.hosts: dict[str, _Host] = {}
        #: Attempts started, all hosts together (for tests and logs).
        self.attempts = 0

    def backed_up(self) -> bool:
        """More room events wait toward XMPP than the bound: new attempts wait too."""
        return bool(self.backlog_limit) and self.backlog is not None and self.backlog() > self.backlog_limit

    def request(self, key: str, user: str, start: Callable[[Ticket], None],
                online: Callable[[], bool] = lambda: True) -> Ticket:
        """
        A ticket for one attempt at ``key`` (host:port). ``start(ticket)`` is
        called on its turn, which may be before this returns: it gets the
        ticket, so whatever it does already knows its place.
        """
        host = self.hosts.get(key)
        if host is None:
            host = self.hosts[key] = _Host(self, key)
        ticket = Ticket(host, user, start, online)
        host.add(ticket)
        return ticket

    def load(self, key: str) -> tuple[int, int, int]:
        """(waiting, attempting, connected) at ``key``."""
        host = self.hosts.get(key)
        if host is None:
            return 0, 0, 0
        return host.waiting, len(host.attempting), len(host.connected)
