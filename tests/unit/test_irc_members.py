"""
The compact member lists of gateway/adapters/irc/members.py: mode bits in an int
instead of a set, interned nicks; and, through a real session on an in-memory
transport, that roles follow the modes as they did with sets.
"""

from __future__ import annotations

import sys

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.adapters.irc import client, members
from gateway.model import Registration
from tests.unit.test_irc_session import SERVER, IRCSessionCase


class ModeBits(SynchronousTestCase):
    def test_each_prefix_has_its_own_bit(self):
        bits = [members.BIT[p] for p in members.PREFIXES]
        self.assertEqual(len(set(bits)), 5)
        self.assertEqual(sum(bits), members.ALL)

    def test_a_names_entry_splits_into_bits_and_nick(self):
        self.assertEqual(members.split_prefixes("alice"), (0, "alice"))
        self.assertEqual(members.split_prefixes("@alice"), (members.BIT["@"], "alice"))
        self.assertEqual(members.split_prefixes("@+bob"), (members.BIT["@"] | members.BIT["+"], "bob"))
        self.assertEqual(members.split_prefixes("~&@%+x"), (members.ALL, "x"))
        self.assertEqual(members.split_prefixes("+"), (members.BIT["+"], ""))
        self.assertEqual(members.split_prefixes(""), (0, ""))

    def test_only_leading_prefixes_count(self):
        self.assertEqual(members.split_prefixes("a@b"), (0, "a@b"))

    def test_the_highest_prefix_decides(self):
        self.assertIsNone(members.highest(0))
        self.assertEqual(members.highest(members.BIT["+"]), "+")
        self.assertEqual(members.highest(members.BIT["+"] | members.BIT["%"]), "%")
        self.assertEqual(members.highest(members.BIT["@"] | members.BIT["+"]), "@")
        self.assertEqual(members.highest(members.ALL), "~")
        self.assertIsNone(members.highest(1 << 10))            # no bit of ours: no prefix

    def test_prefixes_come_back_highest_first(self):
        self.assertEqual(members.prefixes(members.BIT["+"] | members.BIT["@"]), "@+")
        self.assertEqual(members.prefixes(0), "")

    def test_mode_letters_map_to_the_prefix_bits(self):
        for letter, prefix in zip("qaohv", members.PREFIXES):
            self.assertEqual(members.MODE_BIT[letter], members.BIT[prefix])

    def test_nicks_are_one_string(self):
        a, b = "".join(["ali", "ce9"]), "".join(["alic", "e9"])
        self.assertIsNot(a, b)
        self.assertIs(members.nick(a), members.nick(b))
        self.assertIs(members.nick(a), sys.intern("alice9"))


class RolesFollowModes(IRCSessionCase):
    """The session's occupants hold ints; the roles the room shows are those the sets gave."""

    def joined(self, names: str):
        session = self.sign_on()
        self.adapter.join(self.registration, "phone", f"#room%{SERVER}", "alice", None)
        for line in (f":alice!a@h JOIN #room", f":{SERVER} 353 alice = #room :{names}",
                     f":{SERVER} 366 alice #room :End of NAMES list"):
            self.conn.lineReceived(line.encode())
        return session, session.rooms["#room"]

    def last_presence(self, nick: str):
        return [e for e in self.context.events if e.kind == "presence" and e.nick == nick][-1]

    def test_names_give_bits_and_roles(self):
        session, room = self.joined("alice @+bob %carol +dave ~erin eve")
        self.assertEqual(room.occupants, {"alice": 0, "bob": members.BIT["@"] | members.BIT["+"],
                                          "carol": members.BIT["%"], "dave": members.BIT["+"],
                                          "erin": members.BIT["~"], "eve": 0})
        roles = {n: (self.last_presence(n).role, self.last_presence(n).affiliation)
                 for n in ("bob", "carol", "dave", "erin", "eve")}
        self.assertEqual(roles, {"bob": ("moderator", "admin"), "carol": ("moderator", "member"),
                                 "dave": ("participant", "member"), "erin": ("moderator", "owner"),
                                 "eve": ("participant", "none")})

    def test_mode_changes_set_and_clear_bits(self):
        session, room = self.joined("alice @+bob eve")
        self.conn.lineReceived(b":bob!b@h MODE #room +o eve")
        self.assertEqual(room.occupants["eve"], members.BIT["@"])
        self.assertEqual(self.last_presence("eve").role, "moderator")
        self.conn.lineReceived(b":bob!b@h MODE #room -o bob")
        self.assertEqual(room.occupants["bob"], members.BIT["+"])      # still voiced
        self.assertEqual((self.last_presence("bob").role, self.last_presence("bob").affiliation),
                         ("participant", "member"))
        self.conn.lineReceived(b":bob!b@h MODE #room -v bob")
        self.assertEqual(room.occupants["bob"], 0)
        self.assertEqual(self.last_presence("bob").affiliation, "none")
        self.conn.lineReceived(b":bob!b@h MODE #room -v bob")           # cleared twice: still none
        self.assertEqual(room.occupants["bob"], 0)

    def test_a_member_without_modes_parts_and_is_gone(self):
        session, room = self.joined("alice eve")
        self.conn.lineReceived(b":eve!e@h PART #room :bye")
        self.assertNotIn("eve", room.occupants)
        self.assertTrue(self.last_presence("eve").unavailable)            # modes 0 still counted as a member

    def test_a_nick_change_keeps_the_bits(self):
        session, room = self.joined("alice +eve")
        self.conn.lineReceived(b":eve!e@h NICK :eva")
        self.assertEqual(room.occupants, {"alice": 0, "eva": members.BIT["+"]})

    def test_members_seen_by_two_connections_share_their_nick(self):
        _, room = self.joined("alice " + "".join(["bo", "b"]))
        second = Registration(component=self.context.component, jid="carol@example.org")
        self.adapter.join(second, "phone", f"#room%{SERVER}", "carol", None)
        self.clock.advance(1.0)                                   # its turn with the scheduler
        conn = self.clock.tcpClients[-1][2].buildProtocol(None)
        conn.makeConnection(StringTransport())
        for line in (f":{SERVER} 001 carol :Welcome", ":carol!c@h JOIN #room",
                     f":{SERVER} 353 carol = #room :carol alice " + "".join(["b", "ob"]),
                     f":{SERVER} 366 carol #room :End"):
            conn.lineReceived(line.encode())
        room2 = self.adapter.sessions[("carol@example.org", SERVER)].rooms["#room"]
        self.assertEqual(set(room2.occupants), {"alice", "bob", "carol"})
        self.assertIs(next(k for k in room.occupants if k == "bob"), next(k for k in room2.occupants if k == "bob"))
        for c in (self.conn, conn):                               # a later member with a user and host
            c.lineReceived(":dave!" .encode() + b"d@dave.example JOIN #room")
        self.assertEqual(room.hosts["dave"], ("d", "dave.example"))
        self.assertIs(room.hosts["dave"], room2.hosts["dave"])    # one tuple for both connections
        conn.transport.connected = False
        conn.connectionLost(Failure(ConnectionDone()))


class SharedISupport(IRCSessionCase):
    """Connections sent the same ISUPPORT tokens share one parsed table; none sees another's change."""

    TOKENS = "PREFIX=(qaohv)~&@%+ CHANTYPES=#&+ CHANMODES=beI,k,l,imMnOPQRstVz NICKLEN=9 CASEMAPPING=ascii"

    def connection(self, jid: str, nick: str):
        self.adapter.join(Registration(component=self.context.component, jid=jid), "phone", f"#room%{SERVER}", nick,
                          None)
        self.clock.advance(1.0)
        conn = self.clock.tcpClients[-1][2].buildProtocol(None)
        conn.makeConnection(StringTransport())
        conn.lineReceived(f":{SERVER} 001 {nick} :Welcome".encode())
        self.addCleanup(self.drop, conn)
        return conn

    @staticmethod
    def drop(conn):
        conn.transport.connected = False
        conn.connectionLost(Failure(ConnectionDone()))

    def isupport(self, conn, tokens: str):
        conn.lineReceived(f":{SERVER} 005 nick {tokens} :are supported on this server".encode())

    def test_two_users_of_one_server_share_the_table(self):
        a, b = self.connection("a@example.org", "anna"), self.connection("b@example.org", "bert")
        self.assertIsNot(a, b)
        self.isupport(a, self.TOKENS + " X1=unique-to-this-test")
        self.isupport(b, self.TOKENS + " X1=unique-to-this-test")
        self.assertIs(a.supported, b.supported)
        self.assertEqual(a.supported.getFeature("NICKLEN"), 9)
        self.assertEqual(a.supported.getFeature("CASEMAPPING"), ("ascii",))
        self.assertEqual(a.supported.getFeature("PREFIX"), {"q": ("~", 0), "a": ("&", 1), "o": ("@", 2),
                                                           "h": ("%", 3), "v": ("+", 4)})

    def test_a_later_line_for_one_connection_leaves_the_other_alone(self):
        a, b = self.connection("a@example.org", "anna"), self.connection("b@example.org", "bert")
        for conn in (a, b):
            self.isupport(conn, self.TOKENS + " X2=second-test")
        shared = a.supported
        self.isupport(a, "NICKLEN=30 -CASEMAPPING")
        self.assertIsNot(a.supported, shared)
        self.assertEqual(a.supported.getFeature("NICKLEN"), 30)
        self.assertFalse(a.supported.hasFeature("CASEMAPPING"))
        self.assertEqual(a.supported.getFeature("PREFIX")["o"], ("@", 2))        # the first line's tokens stay
        self.assertIs(b.supported, shared)
        self.assertEqual(b.supported.getFeature("NICKLEN"), 9)
        self.assertEqual(b.supported.getFeature("CASEMAPPING"), ("ascii",))
        self.isupport(b, "NICKLEN=30 -CASEMAPPING")
        self.assertIs(b.supported, a.supported)                               # the same tokens again: shared

    def test_modes_are_parsed_with_the_shared_table(self):
        a = self.connection("a@example.org", "anna")
        self.isupport(a, self.TOKENS)
        for line in (":anna!a@h JOIN #room", f":{SERVER} 353 anna = #room :anna eve",
                     f":{SERVER} 366 anna #room :End", ":op!o@h MODE #room +kv secret eve"):
            a.lineReceived(line.encode())
        room = self.adapter.sessions[("a@example.org", SERVER)].rooms["#room"]
        self.assertEqual(room.occupants["eve"], members.BIT["+"])               # k took its argument, v got eve

    def test_the_cache_is_bounded_in_entries_and_size(self):
        from gateway.adapters.irc import client
        a = self.connection("a@example.org", "anna")
        for i in range(client.MAX_SHARED_ISUPPORT + 10):
            a._isupport, a._isupport_lines = (), 0
            self.isupport(a, f"T{i}=x")
        self.assertLessEqual(len(client._SUPPORTED), client.MAX_SHARED_ISUPPORT)
        a._isupport, a._isupport_lines = (), 0
        big = " ".join(f"BIG{i}={'v' * 60}" for i in range(client.MAX_SHARED_TOKENS // 60 + 1))
        self.isupport(a, big)
        self.assertTrue(a.supported.hasFeature("BIG0"))
        self.assertNotIn(a._isupport, client._SUPPORTED)                      # parsed for this connection alone


class IdleConnectionsHoldNoBuffers(IRCSessionCase):
    rate = 1.0
    burst = 2

    def test_the_send_queue_is_dropped_once_drained(self):
        self.sign_on()
        self.conn.send_lines(["JOIN #a", "JOIN #b", "JOIN #c"])
        self.assertEqual(len(self.conn._pending), 1)                          # two went at once, one waits
        self.clock.advance(1.0)
        self.assertEqual(self.written()[-1], "JOIN #c")
        self.assertIsNone(self.conn._pending)
        self.conn.send_lines(["JOIN #d"])                                    # and it comes back when needed
        self.assertEqual(len(self.conn._pending), 1)
        self.clock.advance(1.0)
        self.assertEqual(self.written()[-1], "JOIN #d")
        self.assertIsNone(self.conn._pending)

    def test_offered_capabilities_are_forgotten_after_negotiation(self):
        session = self.adapter.session(self.registration, SERVER, "alice")
        session.connect()
        self.conn = self.clock.tcpClients[0][2].buildProtocol(None)
        self.conn.makeConnection(StringTransport())
        self.conn.lineReceived(f":{SERVER} CAP * LS * :multi-prefix".encode())
        self.assertEqual(self.conn._offered, {"multi-prefix"})
        self.conn.lineReceived(f":{SERVER} CAP * LS :server-time".encode())
        self.assertIsNone(self.conn._offered)
        self.assertIn(b"CAP REQ :server-time multi-prefix", self.conn.transport.value())


class TheChannelListIsNotKeptForever(IRCSessionCase):
    burst = 5
    def test_the_list_answers_for_a_minute_then_is_dropped(self):
        from gateway.adapters.irc.session import LIST_CACHE
        session = self.sign_on()
        self.adapter.join(self.registration, "phone", f"#room%{SERVER}", "alice", None)   # stays connected
        d = session.list_channels()
        self.assertIn("LIST", self.written())
        self.conn.lineReceived(f":{SERVER} 322 alice #big 12 :a topic".encode())
        self.conn.lineReceived(f":{SERVER} 323 alice :End of LIST".encode())
        first = self.successResultOf(d)
        self.assertEqual(len(first), 1)
        self.transports[-1].clear()
        self.clock.advance(LIST_CACHE / 2)
        self.assertIs(self.successResultOf(session.list_channels()), first)   # from the cache: no LIST
        self.assertNotIn("LIST", self.written())
        self.clock.advance(LIST_CACHE / 2 + 1)
        self.assertIsNone(session._list_cache)
        session.list_channels()
        self.assertIn("LIST", self.written())


class HotObjectsHaveSlots(IRCSessionCase):
    """One session, room and connection per user: no instance dict for our own state (see irc_memory)."""

    def test_sessions_and_rooms_have_no_instance_dict(self):
        session = self.sign_on()
        self.adapter.join(self.registration, "phone", f"#room%{SERVER}", "alice", None)
        self.assertFalse(hasattr(session, "__dict__"))
        self.assertFalse(hasattr(session.rooms["#room"], "__dict__"))

    def test_the_connection_keeps_only_twisteds_attributes_in_its_dict(self):
        self.sign_on()
        own = set(vars(self.conn)) & set(type(self.conn).__slots__)
        self.assertEqual(own, set())
        self.assertLessEqual(len(vars(self.conn)), 16)


def test_the_shared_user_host_table_is_bounded(monkeypatch):
    """A server inventing a new host per line cannot grow the table past its bound."""
    monkeypatch.setattr(members, "USERHOST_LIMIT", 100)
    monkeypatch.setattr(members, "_USERHOSTS", {})
    kept = [members.userhost(("u", f"h{n}.example")) for n in range(250)]
    assert len(members._USERHOSTS) <= 100
    assert kept[0] == ("u", "h0.example")                         # handed-out pairs stay valid
    assert members.userhost(("u", "h249.example")) is kept[249]


class OneKeepaliveTimerPerAdapter(SharedISupport):
    """
    The keepalive PINGs come from the adapter's one wheel (heartbeat.py), not a
    LoopingCall and DelayedCall per connection (about 650 bytes each): still every
    heartbeatInterval seconds per connection, and never after the connection ends.
    """

    def pings(self, conn) -> int:
        return sum(1 for line in conn.transport.value().decode().splitlines() if line.startswith("PING "))

    def test_more_connections_add_no_timer(self):
        a = self.connection("a@example.org", "anna")
        self.clock.advance(1.0)
        timers = len(self.clock.getDelayedCalls())
        others = [self.connection(f"u{n}@example.org", f"user{n}") for n in range(5)]
        self.clock.advance(1.0)
        self.assertEqual(len(self.clock.getDelayedCalls()), timers)
        for conn in [a, *others]:
            self.drop(conn)
        self.assertEqual(self.clock.getDelayedCalls(), [])          # an idle adapter keeps no keepalive timer

    def test_each_connection_is_pinged_every_interval_until_it_ends(self):
        interval = client.IRCConnection.heartbeatInterval
        a = self.connection("a@example.org", "anna")
        started_a = self.clock.seconds()
        self.clock.advance(interval / 2)
        b = self.connection("b@example.org", "bert")
        started_b = self.clock.seconds()
        seen: dict[str, list[float]] = {"a": [], "b": []}
        counts = {"a": 0, "b": 0}
        while self.clock.seconds() < started_a + 3 * interval + 2:
            self.clock.advance(0.5)
            for name, conn in (("a", a), ("b", b)):
                if self.pings(conn) > counts[name]:
                    counts[name] = self.pings(conn)
                    seen[name].append(self.clock.seconds())
            if len(seen["a"]) == 2 and not a._lost:
                self.drop(a)
        self.assertEqual(len(seen["a"]), 2)                         # none after the connection ended
        self.assertEqual(len(seen["b"]), 2)
        for times, start in ((seen["a"], started_a), (seen["b"], started_b)):
            self.assertGreater(times[0] - start, interval - 1.5)    # the hand moves by whole seconds
            self.assertLessEqual(times[0] - start, interval + 0.5)
            self.assertAlmostEqual(times[1] - times[0], interval, delta=0.5)

    def test_a_late_reactor_still_pings_everyone_once(self):
        conns = [self.connection(f"u{n}@example.org", f"user{n}") for n in range(3)]
        for n in range(3):
            conns[n].transport.clear()
            self.clock.advance(7.0)
        self.clock.advance(client.IRCConnection.heartbeatInterval * 3)  # one jump: many ticks at once
        self.assertEqual([self.pings(c) for c in conns], [1, 1, 1])
