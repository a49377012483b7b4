"""
The IRC connection scheduler on a task.Clock: limits in flight, rate, cap,
round robin between users, users online first, and the jittered backoff.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.adapters.irc.scheduler import ConnectScheduler, backoff

HOST = "irc.test:6667"


class SchedulerCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.started: list[tuple[float, str]] = []

    def scheduler(self, **kw) -> ConnectScheduler:
        return ConnectScheduler(self.clock, **kw)

    def ask(self, scheduler, user: str, online=True, host=HOST):
        tag = user
        return scheduler.request(host, user, lambda t: self.started.append((self.clock.seconds(), tag)),
                                 lambda: online)

    def test_rate_paces_a_storm(self):
        s = self.scheduler(concurrent=100, rate=5.0)
        tickets = [self.ask(s, f"u{i}") for i in range(20)]
        self.assertEqual(len(self.started), 1)              # one token: the first at once
        for _ in range(500):
            self.clock.advance(0.01)
        self.assertEqual(len(self.started), 20)
        stamps = [t for t, _ in self.started]
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        self.assertTrue(all(g >= 0.2 - 1e-9 for g in gaps), gaps)
        self.assertLess(abs(stamps[-1] - 19 * 0.2), 0.2)             # each turn may wait for the next 10 ms tick
        self.assertTrue(all(not t.waiting for t in tickets))

    def test_in_flight_limit_until_signed_on_or_released(self):
        s = self.scheduler(concurrent=2, rate=0)
        tickets = [self.ask(s, f"u{i}") for i in range(5)]
        self.assertEqual(len(self.started), 2)
        self.assertEqual(s.load(HOST), (3, 2, 0))
        tickets[0].signed_on()                               # welcomed: no longer in flight
        self.assertEqual(len(self.started), 3)
        tickets[1].release()                                 # failed: its place goes to the next
        self.assertEqual(len(self.started), 4)
        self.assertEqual(s.load(HOST), (1, 2, 1))
        self.assertEqual(tickets[4].position(), 1)

    def test_cap_on_connections_and_queue_positions(self):
        s = self.scheduler(concurrent=10, rate=0, max_connections=2)
        tickets = [self.ask(s, f"u{i}") for i in range(4)]
        for t in tickets[:2]:
            t.signed_on()
        self.assertEqual([t.position() for t in tickets], [None, None, 1, 2])
        self.assertTrue(tickets[2].capped() and tickets[3].capped())
        tickets[0].release()                                 # a user left: the first in line goes
        self.assertEqual([u for _, u in self.started], ["u0", "u1", "u2"])
        self.assertEqual(tickets[3].position(), 1)
        tickets[3].release()                                 # gave up waiting
        self.assertEqual(s.load(HOST), (0, 1, 1))

    def test_round_robin_between_users(self):
        s = self.scheduler(concurrent=1, rate=0)
        tickets = [self.ask(s, u) for u in ("greedy", "greedy", "greedy", "other", "greedy", "third")]
        order = []
        while len(order) < len(tickets):
            order.append(self.started[len(order)][1])
            next(t for t in tickets if t.state == "attempting").release()
        self.assertEqual(order, ["greedy", "greedy", "other", "third", "greedy", "greedy"])

    def test_users_online_before_users_with_none(self):
        s = self.scheduler(concurrent=1, rate=0)
        blocker = self.ask(s, "blocker")
        self.ask(s, "offline1", online=False)
        self.ask(s, "offline2", online=False)
        late = self.ask(s, "online", online=True)
        self.assertEqual(late.position(), 1)
        blocker.release()
        self.assertEqual(self.started[-1][1], "online")

    def test_hosts_are_independent(self):
        s = self.scheduler(concurrent=1, rate=1.0)
        self.ask(s, "a", host="one:6667")
        self.ask(s, "b", host="two:6667")
        self.assertEqual(len(self.started), 2)

    def test_a_start_that_fails_at_once_frees_its_place(self):
        s = self.scheduler(concurrent=1, rate=0)

        def start(ticket):
            raise RuntimeError("boom")
        broken = s.request(HOST, "x", start)
        self.ask(s, "y")
        self.assertEqual(broken.state, "done")
        self.assertEqual([u for _, u in self.started], ["y"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_idle_host_is_forgotten_once_its_bucket_is_full(self):
        s = self.scheduler(concurrent=1, rate=2.0)
        t = self.ask(s, "a")
        t.release()
        self.assertIn(HOST, s.hosts)                       # the token is spent: keep the bucket
        self.clock.advance(0.6)
        t2 = self.ask(s, "b")
        t2.release()
        self.clock.advance(1.0)
        self.ask(s, "c").release()
        self.assertEqual(len(self.started), 3)


class BackoffCase(SynchronousTestCase):
    def test_exponential_capped_and_jittered(self):
        self.assertEqual(backoff(1, 1.0, 60.0, rand=lambda: 1.0), 1.0)
        self.assertEqual(backoff(4, 1.0, 60.0, rand=lambda: 1.0), 8.0)
        self.assertEqual(backoff(20, 1.0, 60.0, rand=lambda: 1.0), 60.0)
        self.assertEqual(backoff(20, 1.0, 60.0, rand=lambda: 0.0), 30.0)
        self.assertEqual(backoff(0, 2.0, 60.0, rand=lambda: 0.5), 1.5)
