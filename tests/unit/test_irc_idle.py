"""The idle policy on a clock: a connection nobody's XMPP client uses is closed idle_timeout later, not before."""

from tests.unit.test_irc_session import SERVER, IRCSessionCase


class IdleConnectionsAreClosed(IRCSessionCase):
    rate = 0.0
    extra = {"persistent": True, "idle_timeout": 60.0}

    def joined(self, session, resource="phone"):
        session.join(resource, "#c", "alice")
        self.conn.lineReceived(f":alice!u@h JOIN #c\r".encode())
        self.conn.lineReceived(f":{SERVER} 366 alice #c :End of NAMES".encode())

    def test_a_persistent_connection_left_by_every_client_quits_after_the_timeout(self):
        session = self.sign_on()
        self.joined(session)
        self.clock.advance(600)
        self.assertFalse(session.closed)                       # a client is in: never idle
        session.leave("phone", "#c")
        self.clock.advance(59)
        self.assertFalse(session.closed)                       # persistent, and not yet idle long enough
        self.clock.advance(2)
        self.assertTrue(session.closed)
        self.assertIn("QUIT :No client online", self.written())

    def test_a_client_coming_back_stops_the_clock(self):
        session = self.sign_on()
        self.joined(session)
        session.leave("phone", "#c")
        self.clock.advance(30)
        self.joined(session, "laptop")
        self.clock.advance(120)
        self.assertFalse(session.closed)

    def test_a_connection_opened_for_a_private_message_is_idle_too(self):
        session = self.sign_on()                               # no room: nobody's client is in one
        self.clock.advance(61)
        self.assertTrue(session.closed)


class NoIdleTimeoutByDefault(IRCSessionCase):
    rate = 0.0
    extra = {"persistent": True}

    def test_zero_keeps_connections(self):
        session = self.sign_on()
        self.clock.advance(10 ** 6)
        self.assertFalse(session.closed)
