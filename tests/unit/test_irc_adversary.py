"""
A hostile XMPP user or IRC server against one IRC session in memory (the real
adapter, session and connection of tests/unit/test_irc_session.py): each test
failed before its fix (adversary review).
"""

from __future__ import annotations

from tests.unit.test_irc_session import SERVER, USER, IRCSessionCase


class TypingFloods(IRCSessionCase):
    rate = 1.0
    burst = 1

    def sign_on_with(self, caps: str):
        session = self.sign_on()
        self.conn.lineReceived(f":{SERVER} CAP alice ACK :{caps}".encode())
        self.transports[-1].clear()
        return session

    def test_typing_never_waits_behind_the_throttle(self):
        """
        Chat states went into the connection's send queue like commands (send_lines
        has no bound): a user sending them faster than the throttle (2 lines/s)
        grew the queue without limit, and the user's own messages were refused
        behind it (QueueFull). Typing is passed on now or not at all.
        """
        self.sign_on_with("message-tags")
        for n in range(5000):
            typing = self.message(None)
            typing.chat_state = "composing" if n % 2 else "paused"
            self.adapter.typing(typing, self.registration)
        self.assertLessEqual(len(self.conn._pending or ()), 1)
        d = self.send(self.message("still here"))
        for _ in range(5):
            self.clock.advance(1.0)
        self.assertIn("PRIVMSG bob :still here", self.written())


class RawCommandFloods(IRCSessionCase):
    def test_raw_commands_are_held_within_the_send_queue_bound(self):
        """
        Raw commands (messages to the server's JID) went into the send queue with
        no bound: eight lines a message at the user's rate, drained at the server's
        throttle, grew the queue (and the gateway's memory) without limit. Past
        MAX_PENDING_LINES they are refused like any message (QueueFull).
        """
        from gateway.adapters.irc.client import MAX_PENDING_LINES, QueueFull

        self.sign_on()
        body = "\n".join(f"WHOIS nick{n}" for n in range(8))
        results = [self.adapter.raw_command(self.registration, SERVER, body) for _ in range(1000)]
        self.assertLessEqual(len(self.conn._pending or ()), MAX_PENDING_LINES)
        self.successResultOf(results[0])
        failed = [self.failureResultOf(d, QueueFull) for d in results if d.called and not isinstance(
            d.result, type(None))]
        self.assertTrue(failed)


class NickChangeFloods(IRCSessionCase):
    def test_nick_changes_are_held_within_the_send_queue_bound(self):
        """
        Each presence to room/othernick while joined queued a NICK line with no
        bound (presences are not rate limited): a flood of them grew the send
        queue without limit. Past MAX_PENDING_LINES the change is refused.
        """
        from gateway.adapters.irc.client import MAX_PENDING_LINES
        from gateway.model import GatewayError

        self.sign_on()
        self.adapter.join(self.registration, "phone", f"#room%{SERVER}", "alice", None)
        self.conn.lineReceived(b":alice!a@h JOIN #room")
        self.conn.lineReceived(f":{SERVER} 366 alice #room :End of NAMES".encode())
        refused = 0
        for n in range(5000):
            try:
                self.adapter.join(self.registration, "phone", f"#room%{SERVER}", f"alice{n}", None)
            except GatewayError:
                refused += 1
        self.assertLessEqual(len(self.conn._pending or ()), MAX_PENDING_LINES)
        self.assertGreater(refused, 0)

    def test_join_and_leave_cycles_are_held_within_the_send_queue_bound(self):
        """Joining and leaving a second channel over and over queued JOIN and PART lines without bound."""
        from gateway.adapters.irc.client import MAX_PENDING_LINES
        from gateway.model import GatewayError

        self.sign_on()
        self.adapter.join(self.registration, "phone", f"#room%{SERVER}", "alice", None)
        refused = 0
        for n in range(5000):
            try:
                self.adapter.join(self.registration, "phone", f"#other%{SERVER}", "alice", None)
            except GatewayError:
                refused += 1
            self.adapter.leave(USER, "phone", f"#other%{SERVER}")
        self.assertLessEqual(len(self.conn._pending or ()), MAX_PENDING_LINES + 1)
        self.assertGreater(refused, 0)


class ChannelSettings(IRCSessionCase):
    def test_a_history_length_in_other_digits_is_bad_request(self):
        """'²' passed str.isdigit() and raised ValueError in int(): an internal error instead of bad-request."""
        from gateway.model import GatewayError

        for value in ("\u00b2", "\u0663"):
            with self.assertRaises(GatewayError) as caught:
                self.adapter._update_channel(self.registration, f"#room%{SERVER}", {"max_history": value})
            self.assertEqual(caught.exception.condition, "bad-request")


class LongCorrections(IRCSessionCase):
    rate = 0.0

    def test_a_long_correction_does_not_hold_the_reactor(self):
        """
        The short-edit diff (s/old/new/) ran difflib over every word of the
        corrected text: a 64 KB correction of ``x x x …`` against a remembered
        message of the same words took seconds of the reactor per stanza, at
        the user's message rate — every user of the gateway waited. A text
        whose length differs by more than one short edit can make is sent whole
        without a diff.
        """
        import time

        session = self.sign_on()
        message = self.message(" ".join(["x"] * 60000))
        message.correction_of, message.ref_body = "m1", " ".join(["x"] * 250)
        started = time.process_time()
        lines = session.wire_lines(message, "bob")
        self.assertLess(time.process_time() - started, 1.5)
        self.assertTrue(lines[0].startswith("PRIVMSG bob :* x x"))


class RefusedRoomLines(IRCSessionCase):
    rate = 0.0

    def test_a_line_the_channel_refuses_is_told_not_lost(self):
        """
        A moderated channel (+m) or one the server will not take our line in
        answers 404 ERR_CANNOTSENDTOCHAN: the gateway ignored it, so the user's
        message, already reflected, was lost without a word. The room says so.
        """
        from gateway.model import OutboundMessage

        session = self.sign_on()
        session.join("phone", "#room", "alice")
        self.conn.lineReceived(b":alice!a@h JOIN #room")
        self.conn.lineReceived(f":{SERVER} 366 alice #room :End of NAMES".encode())
        self.context.events.clear()
        message = OutboundMessage(component=self.context.component, user=USER, recipient=f"#room%{SERVER}",
                                  body="hello", kind="groupchat", xmpp_id="x1")
        self.successResultOf(self.send(message))
        self.context.events.clear()
        self.conn.lineReceived(f":{SERVER} 404 alice #room :Cannot send to channel (+m)".encode())
        notices = [e for e in self.context.events if e.kind == "message" and not e.nick]
        self.assertEqual(len(notices), 1)
        self.assertIn("Cannot send to channel (+m)", notices[0].body)
        self.assertEqual(notices[0].resources, ["phone"])


class PrivateMessagesToNobody(IRCSessionCase):
    rate = 0.0

    def test_a_private_message_to_a_nick_not_there_is_told(self):
        """
        A private message to a nick that is not on the server is answered 401
        ERR_NOSUCHNICK: the gateway ignored it, and the message, counted as
        sent once written, was lost without a word. The nick's JID says so.
        A 401 for a nick the user did not write to (a WHOIS) says nothing.
        """
        self.sign_on()
        self.successResultOf(self.send(self.message("are you there?", to="ghost")))
        self.context.delivered.clear()
        self.conn.lineReceived(f":{SERVER} 401 alice whoisonly :No such nick or channel name".encode())
        self.assertEqual(self.context.delivered, [])
        self.conn.lineReceived(f":{SERVER} 401 alice ghost :No such nick or channel name".encode())
        (told,) = self.context.delivered
        self.assertEqual(told.sender, f"ghost%{SERVER}")
        self.assertIn("not delivered", told.body)
        self.conn.lineReceived(f":{SERVER} 401 alice ghost :No such nick or channel name".encode())
        self.assertEqual(len(self.context.delivered), 1)            # told once per message written
