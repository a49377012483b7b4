"""
The per-user limits (max_sessions_per_user, max_rooms_per_user) are read from
an index by user: a join scanned every session of every user before, so N
joins cost N² steps (10,000 users: 10⁸, tens of seconds of reactor time in
irc_scale). The limits still hold, and are still per user.
"""

from __future__ import annotations

from gateway.model import PolicyViolation, Registration
from tests.unit.test_irc_session import SERVER, IRCSessionCase


class CountingDict(dict):
    """The adapter's session table, counting the walks over all of it."""

    walks = 0

    def items(self):
        CountingDict.walks += 1
        return super().items()

    def values(self):
        CountingDict.walks += 1
        return super().values()

    def __iter__(self):
        CountingDict.walks += 1
        return super().__iter__()


class UserIndex(IRCSessionCase):
    rate = 0.0
    extra = {"max_sessions_per_user": 2, "max_rooms_per_user": 3}

    def setUp(self):
        super().setUp()
        for n, name in enumerate(("other.test", "third.test")):
            self.adapter.config["servers"][name] = {"host": "127.0.0.1", "port": 6668 + n, "tls": False}
        self.adapter.sessions = CountingDict(self.adapter.sessions)
        CountingDict.walks = 0

    def reg(self, n: int) -> Registration:
        return Registration(component=self.context.component, jid=f"u{n}@example.org")

    def test_a_join_does_not_walk_every_session(self):
        for n in range(200):
            self.adapter.join(self.reg(n), "phone", f"#c{n % 7}%{SERVER}", f"n{n}", None)
        self.assertEqual(len(self.adapter.sessions), 200)
        self.assertEqual(CountingDict.walks, 0)

    def test_the_limits_still_hold_per_user(self):
        alice, bob = self.reg(1), self.reg(2)
        self.adapter.join(alice, "phone", f"#a%{SERVER}", "alice", None)
        self.adapter.join(alice, "phone", "#b%other.test", "alice", None)
        with self.assertRaises(PolicyViolation):                       # a third server
            self.adapter.join(alice, "phone", "#c%third.test", "alice", None)
        self.adapter.join(bob, "phone", "#c%third.test", "bob", None)  # bob's own count
        self.adapter.join(alice, "phone", f"#d%{SERVER}", "alice", None)
        with self.assertRaises(PolicyViolation):                       # a fourth room
            self.adapter.join(alice, "phone", f"#e%{SERVER}", "alice", None)
        self.assertEqual(len(self.adapter.sessions_of(alice.jid)), 2)
        for session in self.adapter.sessions_of(alice.jid):
            session.close("test")
        self.assertEqual(self.adapter.sessions_of(alice.jid), [])     # closed sessions leave the index
        self.adapter.join(alice, "phone", "#c%third.test", "alice", None)
