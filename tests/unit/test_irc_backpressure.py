"""
Backpressure in a reconnect storm: while more room events wait toward XMPP
than the bound (``connect_backlog_limit``, 5,000 by default), no new IRC
connection attempt starts. Each rejoin queues one occupant presence per member,
and the component stream drains at its paced rate; without the bound a storm
grows the heap as fast as the IRC servers welcome users (matrix-appservice-irc:
600 lost connections, about 3 GB). Attempts already in flight finish; waiting
ones start once the queue is back under the bound.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.adapters.irc import IRCAdapter
from gateway.adapters.irc.scheduler import ConnectScheduler
from gateway.model import Registration
from tests.unit.test_irc_session import SERVER, Recorder

HOST = "irc.test:6667"


class SchedulerWaitsForTheRoomQueue(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.queued = 0
        self.started: list[str] = []

    def scheduler(self, limit: int = 5000) -> ConnectScheduler:
        return ConnectScheduler(self.clock, concurrent=100, rate=0, backlog=lambda: self.queued,
                                backlog_limit=limit)

    def ask(self, s: ConnectScheduler, user: str):
        return s.request(HOST, user, lambda t: self.started.append(user))

    def test_no_attempt_starts_while_the_queue_is_over_the_bound(self):
        s = self.scheduler()
        self.queued = 5001
        tickets = [self.ask(s, f"u{i}") for i in range(10)]
        self.clock.advance(5.0)
        self.assertEqual(self.started, [])
        self.assertTrue(all(t.waiting for t in tickets))
        self.queued = 5000                              # at the bound is not over it
        self.clock.advance(1.0)
        self.assertEqual(sorted(self.started), sorted(f"u{i}" for i in range(10)))

    def test_a_storm_stops_growing_the_queue_once_over(self):
        """Each started attempt adds to the queue (its join's presences): attempts stop once it is over."""
        s = ConnectScheduler(self.clock, concurrent=1000, rate=0, backlog=lambda: self.queued, backlog_limit=5000)

        def start(ticket):
            self.started.append(ticket.user)
            self.queued += 1000                         # this user's rejoin: a thousand occupant presences
            ticket.signed_on()

        for i in range(50):
            s.request(HOST, f"u{i}", start)
        self.clock.advance(1.0)
        self.assertEqual(len(self.started), 6)          # 0, 1000, ... 5000 queued when each started
        while self.queued > 0:
            self.queued = max(0, self.queued - 2000)    # the stream drains
            self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertGreater(len(self.started), 6)
        self.assertLessEqual(self.queued, 5000 + 1000)

    def test_zero_turns_the_bound_off(self):
        s = self.scheduler(limit=0)
        self.queued = 10 ** 9
        self.ask(s, "u0")
        self.assertEqual(self.started, ["u0"])


class Queued(Recorder):
    """The context, with room events waiting toward XMPP (what the bridge reports)."""

    def __init__(self):
        super().__init__()
        self.queued = 0

    def room_backlog(self) -> int:
        return self.queued


class AdapterAsksTheBridge(SynchronousTestCase):
    def setUp(self):
        self.context = Queued()
        options = {o.key: o.default for o in IRCAdapter.options}
        options.update(servers={SERVER: {"host": "127.0.0.1", "port": 6667, "tls": False}})
        self.adapter = IRCAdapter(options, self.context)
        self.registration = Registration(component=self.context.component, jid="alice@example.org")

    def tearDown(self):
        for session in list(self.adapter.sessions.values()):
            session.closed = True

    def test_the_default_bound_holds_connects_back(self):
        self.context.queued = 5001
        self.adapter.session(self.registration, SERVER, "alice").connect()
        self.context.clock.advance(2.0)
        self.assertEqual(self.context.clock.tcpClients, [])
        self.context.queued = 10
        self.context.clock.advance(2.0)
        self.assertEqual(len(self.context.clock.tcpClients), 1)
