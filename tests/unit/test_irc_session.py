"""
One IRC session in memory: the real adapter, session and connection on a
StringTransport and a MemoryReactorClock, the bridge replaced by a recorder.

Covers what must hold under faults: a private message counts as sent only once
every line is written, a connection lost with lines waiting hands the message
back to the outbox (resuming after the lines already written, in order), the
send queue is bounded; and tags from the IRC server are checked before they
reach the neutral model.
"""

from __future__ import annotations

import math

from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.adapters.irc import IRCAdapter
from gateway.adapters.irc.client import (CTCP_ANSWERS, CTCP_WINDOW, GREETING_WAIT, MAX_ISUPPORT_LINES,
                                         MAX_OFFERED_CAPS, MAX_PENDING_LINES, QueueFull, server_time)
from gateway.model import LostOwnership, OutboundMessage, PermanentFailure, Registration, SendResult, TemporaryFailure

SERVER = "irc.test"
USER = "alice@example.org"


class Recorder:
    """The IAdapterContext an adapter sees, keeping what it is given."""

    component = "irc.example.org"

    def __init__(self):
        self.clock = MemoryReactorClock()
        self.delivered = []
        self.events = []
        self.statuses = []
        self.checkpoints: list[dict] = []
        self.checkpoint_result = None

    def deliver(self, message):
        self.delivered.append(message)
        return defer.succeed(None)

    def room_event(self, event):
        self.events.append(event)

    def room_backlog(self):
        return 0

    def contact_status(self, user, address, available, status):
        self.statuses.append((user, address, available, status))

    def checkpoint(self, message):
        self.checkpoints.append(dict(message.progress))
        if self.checkpoint_result is not None:
            return defer.fail(self.checkpoint_result)
        return defer.succeed(None)


class IRCSessionCase(SynchronousTestCase):
    rate = 1.0
    burst = 1
    extra: dict = {}

    def setUp(self):
        self.context = Recorder()
        self.clock = self.context.clock
        options = {o.key: o.default for o in IRCAdapter.options}
        options.update(servers={SERVER: {"host": "127.0.0.1", "port": 6667, "tls": False}},
                       throttle_rate=self.rate, throttle_burst=self.burst, **self.extra)
        self.adapter = IRCAdapter(options, self.context)
        self.registration = Registration(component=self.context.component, jid=USER)
        self.transports: list[StringTransport] = []
        self.conn = None

    def tearDown(self):
        for session in list(self.adapter.sessions.values()):
            session.closed = True
        if self.conn is not None and self.conn.transport.connected:
            self.conn.connectionLost(Failure(ConnectionDone()))

    def sign_on(self):
        """The connection the session asked for, accepted and welcomed (again after a loss)."""
        session = self.adapter.session(self.registration, SERVER, "alice")
        session.connect()
        factory = self.clock.tcpClients[0][2]
        self.conn = factory.buildProtocol(None)
        transport = StringTransport()
        self.transports.append(transport)
        self.conn.makeConnection(transport)
        self.conn.lineReceived(f":{SERVER} 001 alice :Welcome".encode())
        transport.clear()
        return session

    def lose(self):
        transport = self.conn.transport
        transport.connected = False
        self.conn.connectionLost(Failure(ConnectionDone("the server went away")))

    def written(self, index: int = -1) -> list[str]:
        return self.transports[index].value().decode().splitlines()

    def message(self, body: str, to: str = "bob") -> OutboundMessage:
        return OutboundMessage(component=self.context.component, user=USER, recipient=f"{to}%{SERVER}", body=body)

    def send(self, message: OutboundMessage) -> defer.Deferred:
        return defer.maybeDeferred(self.adapter.send, message, self.registration)


class PrivateMessagesAreConfirmedWhenWritten(IRCSessionCase):
    def test_the_send_fires_only_once_every_line_is_written(self):
        self.sign_on()
        d = self.send(self.message("one\ntwo\nthree"))
        self.assertEqual(self.written(), ["PRIVMSG bob :one"])
        self.assertNoResult(d)
        self.clock.advance(1.0)
        self.assertNoResult(d)
        self.clock.advance(1.0)
        self.assertEqual(self.written(), ["PRIVMSG bob :one", "PRIVMSG bob :two", "PRIVMSG bob :three"])
        self.assertEqual(self.successResultOf(d).parts, 3)

    def test_lines_still_waiting_when_the_connection_is_lost_are_a_temporary_failure(self):
        self.sign_on()
        first = self.send(self.message("first"))
        second = self.send(self.message("second"))
        self.successResultOf(first)
        self.assertNoResult(second)
        self.lose()
        self.failureResultOf(second, TemporaryFailure)

    def test_a_message_cut_short_resumes_after_the_lines_already_written(self):
        """Rule: the outbox retries it; lines written before the loss are not written again."""
        session = self.sign_on()
        message = self.message("one\ntwo\nthree")
        d = self.send(message)
        self.lose()
        self.failureResultOf(d, TemporaryFailure)
        self.assertEqual(message.progress, {"irc_lines": 1})
        self.assertEqual(self.context.checkpoints[-1], {"irc_lines": 1})   # durable before the outbox retries
        self.assertIs(session.conn, None)
        self.sign_on()
        retry = OutboundMessage.from_dict(message.to_dict())               # as the outbox stores and reloads it
        d = self.send(retry)
        self.clock.advance(1.0)
        self.assertEqual(self.written(), ["PRIVMSG bob :two", "PRIVMSG bob :three"])
        self.assertEqual(self.successResultOf(d).parts, 3)

    def test_a_replaced_connection_hands_its_waiting_lines_back(self):
        session = self.sign_on()
        old = self.conn
        message = self.message("one\ntwo")
        d = self.send(message)
        self.sign_on()                                    # a second welcome while the first is still open
        self.failureResultOf(d, TemporaryFailure)
        self.assertEqual(message.progress, {"irc_lines": 1})
        self.assertTrue(old.transport.disconnecting)
        self.assertIs(session.conn, self.conn)
        old.connectionLost(Failure(ConnectionDone()))
        self.assertIs(session.conn, self.conn)            # the old one's end does not touch the new one
        self.clock.advance(5.0)
        self.assertEqual(self.written(0), ["PRIVMSG bob :one"])

    def test_nothing_is_written_after_quit(self):
        session = self.sign_on()
        self.successResultOf(self.send(self.message("first")))
        d = self.send(self.message("second"))
        session.close("bye")
        self.failureResultOf(d, TemporaryFailure)
        self.clock.advance(5.0)
        self.assertEqual(self.written(), ["PRIVMSG bob :first", "QUIT :bye"])

    def test_a_message_not_started_is_retried_whole_without_a_checkpoint(self):
        self.sign_on()
        self.successResultOf(self.send(self.message("first")))
        message = self.message("one\ntwo")
        d = self.send(message)
        self.lose()
        self.failureResultOf(d, TemporaryFailure)
        self.assertEqual(message.progress, {})
        self.assertEqual(self.context.checkpoints, [])

    def test_progress_is_checkpointed_while_a_long_message_trickles_out(self):
        self.sign_on()
        message = self.message("one\ntwo\nthree")
        d = self.send(message)
        self.clock.advance(1.0)
        self.assertEqual(self.context.checkpoints, [{"irc_lines": 1}, {"irc_lines": 2}])
        self.clock.advance(1.0)
        self.successResultOf(d)

    def test_a_message_taken_over_by_another_process_stops_at_once(self):
        self.sign_on()
        self.context.checkpoint_result = LostOwnership("another process took the message over")
        d = self.send(self.message("one\ntwo\nthree"))
        self.failureResultOf(d, LostOwnership)
        self.clock.advance(5.0)
        self.assertEqual(self.written(), ["PRIVMSG bob :one"])

    def test_a_later_message_does_not_overtake_one_waiting_for_its_retry(self):
        """The outbox's jittered backoff may bring retries back in any order."""
        self.sign_on()
        self.successResultOf(self.send(self.message("zero")))
        older, newer = self.message("older"), self.message("newer")
        d1, d2 = self.send(older), self.send(newer)
        self.lose()
        self.failureResultOf(d1, TemporaryFailure)
        self.failureResultOf(d2, TemporaryFailure)
        self.sign_on()
        self.failureResultOf(self.send(newer), TemporaryFailure)         # its turn has not come
        self.assertEqual(self.written(), [])
        self.successResultOf(self.send(older))
        self.clock.advance(1.0)
        self.successResultOf(self.send(newer))
        self.assertEqual(self.written(), ["PRIVMSG bob :older", "PRIVMSG bob :newer"])

    def test_another_conversation_is_not_held_up(self):
        self.sign_on()
        self.successResultOf(self.send(self.message("zero")))
        d = self.send(self.message("to bob"))
        self.lose()
        self.failureResultOf(d, TemporaryFailure)
        self.sign_on()
        self.successResultOf(self.send(self.message("to carol", to="carol")))

    def test_the_send_queue_is_bounded(self):
        self.sign_on()
        filled = self.send(self.message("\n".join(f"line {i}" for i in range(MAX_PENDING_LINES)), to="carol"))
        self.addCleanup(filled.addErrback, lambda f: f.trap(TemporaryFailure))
        more = self.send(self.message("one\ntwo"))
        failure = self.failureResultOf(more, TemporaryFailure)
        self.assertIn("IRC send queue full", failure.value.text)
        self.assertEqual(self.written(), ["PRIVMSG carol :line 0"])
        self.clock.pump([1.0] * 3)
        self.failureResultOf(self.send(self.message("short")), TemporaryFailure)     # not before the one refused

    def test_room_messages_are_not_held_back_by_the_throttle(self):
        session = self.sign_on()
        session.join("laptop", "#room", "alice")
        self.conn.lineReceived(b":alice!a@h JOIN #room")
        self.conn.lineReceived(f":{SERVER} 366 alice #room :End of NAMES".encode())
        self.clock.advance(5.0)
        message = OutboundMessage(component=self.context.component, user=USER, recipient=f"#room%{SERVER}",
                                  body="one\ntwo", kind="groupchat", xmpp_id="x1")
        self.assertEqual(self.successResultOf(self.send(message)).parts, 2)
        self.assertEqual([e.body for e in self.context.events if e.kind == "message"], ["one\ntwo"])


class WhatTheUserSeesWhenTheSendQueueIsFull(IRCSessionCase):
    """
    MAX_PENDING_LINES lines wait behind the throttle. What a user sees when a
    message meets a full queue: a room message is refused at once with a wait
    error (muc.py sends the sender ``e.condition``, ``e.text``, ``e.error_type``);
    a private message stays in the outbox and goes once the queue drains; one
    longer than the queue itself can never go and is refused for good.
    """

    def fill(self) -> defer.Deferred:
        """A private message of MAX_PENDING_LINES lines: one written, the rest waiting (1 line/s)."""
        d = self.send(self.message("\n".join(f"line {i}" for i in range(MAX_PENDING_LINES)), to="carol"))
        self.assertNoResult(d)
        self.addCleanup(d.addErrback, lambda f: f.trap(TemporaryFailure))   # cut by tearDown's connection loss
        return d

    def room(self, session) -> None:
        session.join("laptop", "#room", "alice")
        self.conn.lineReceived(b":alice!a@h JOIN #room")
        self.conn.lineReceived(f":{SERVER} 366 alice #room :End of NAMES".encode())

    def test_a_room_message_is_refused_at_once_with_a_wait_error(self):
        session = self.sign_on()
        self.room(session)
        self.clock.advance(5.0)
        self.fill()
        message = OutboundMessage(component=self.context.component, user=USER, recipient=f"#room%{SERVER}",
                                  body="one\ntwo", kind="groupchat", xmpp_id="x1")
        error = self.failureResultOf(self.send(message), QueueFull).value
        self.assertEqual((error.condition, error.error_type), ("resource-constraint", "wait"))
        self.assertIn(SERVER, error.text)
        self.assertIn(f"{MAX_PENDING_LINES} lines", error.text)
        self.assertIn("try again", error.text)
        self.assertEqual([e for e in self.context.events if e.kind == "message"], [])   # not reflected either

    def test_a_private_message_waits_in_the_outbox_and_goes_once_the_queue_drains(self):
        self.sign_on()
        filled = self.fill()
        message = self.message("hello\nworld")
        first = self.failureResultOf(self.send(message), TemporaryFailure).value
        self.assertIsInstance(first, QueueFull)                       # temporary: the outbox retries it
        self.assertEqual(message.progress, {})
        self.clock.pump([1.0] * MAX_PENDING_LINES)
        self.successResultOf(filled)
        retry = OutboundMessage.from_dict(message.to_dict())
        d = self.send(retry)
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(d).parts, 2)
        self.assertEqual(self.written()[-2:], ["PRIVMSG bob :hello", "PRIVMSG bob :world"])

    def test_a_message_longer_than_the_queue_is_refused_for_good(self):
        """It could never fit: retrying it until the outbox deadline would only delay the error by an hour."""
        self.sign_on()
        d = self.send(self.message("\n".join(f"line {i}" for i in range(MAX_PENDING_LINES + 1))))
        error = self.failureResultOf(d, PermanentFailure).value
        self.assertEqual(error.condition, "policy-violation")
        self.assertIn(f"{MAX_PENDING_LINES + 1} IRC lines", error.text)
        self.assertEqual(self.written(), [])
        self.successResultOf(self.send(self.message("short")))       # the conversation is not held up


class UnthrottledPrivateMessages(IRCSessionCase):
    rate = 0.0

    def test_written_at_once(self):
        self.sign_on()
        d = self.send(self.message("one\ntwo"))
        self.assertEqual(self.written(), ["PRIVMSG bob :one", "PRIVMSG bob :two"])
        self.assertEqual(self.successResultOf(d).parts, 2)


# -- tags from the IRC server ---------------------------------------------------------

NOW = 1_700_000_000.0


def test_server_time_strict():
    assert server_time({"time": "2020-01-02T03:04:05.000Z"}, NOW) == 1577934245.0
    assert server_time({"time": "2020-01-02T03:04:05Z"}, NOW) == 1577934245.0
    assert server_time({"time": "2020-01-02T03:04:05.25Z"}, NOW) == 1577934245.25
    assert server_time({"time": "2023-11-14T22:13:20.123456789Z"}, NOW) == NOW + 0.123456789


def test_server_time_rejects_what_is_not_a_plain_utc_stamp():
    for stamp in ["2024-01-01T00:00:00.5e400Z", "2024-01-01T00:00:00.infZ", "2024-01-01T00:00:00.nanZ",
                  "2024-01-01T00:00:00", "2024-01-01T00:00:00+00:00", "2024-01-01 00:00:00Z",
                  "2024-13-01T00:00:00Z", "2023-02-29T00:00:00Z", "2024-01-01T24:00:00Z", "2024-01-01T00:00:00.Z",
                  "２０２４-01-01T00:00:00Z", "2024-01-01T00:00:00.5Zjunk", "", "inf", "nan"]:
        assert server_time({"time": stamp}, NOW) is None, stamp


def test_server_time_rejects_absurd_dates():
    assert server_time({"time": "1989-12-31T23:59:59Z"}, NOW) is None
    assert server_time({"time": "1990-01-01T00:00:00Z"}, NOW) == 631152000.0
    assert server_time({"time": "2023-11-15T22:13:19Z"}, NOW) is not None       # clocks differ: within a day
    assert server_time({"time": "2023-11-15T22:13:21Z"}, NOW) is None
    assert server_time({"time": "9999-12-31T23:59:59.999Z"}, NOW) is None
    assert server_time({}, NOW) is None


HOSTILE_TIME = "2024-01-01T00:00:00.5e400Z"


class TagsReachTheModelOnlyWhenSane(IRCSessionCase):
    rate = 0.0

    def private(self, tags: str):
        self.conn.lineReceived(f"@{tags} :bob!b@h PRIVMSG alice :hi".encode())
        return self.context.delivered[-1]

    def test_a_hostile_server_time_is_ignored_and_the_message_delivered(self):
        self.sign_on()
        message = self.private(f"time={HOSTILE_TIME};msgid=ok-1")
        self.assertEqual((message.body, message.timestamp, message.foreign_id), ("hi", None, "ok-1"))
        self.assertTrue(message.timestamp is None or math.isfinite(message.timestamp))

    def test_a_plausible_server_time_is_kept(self):
        self.sign_on()
        self.assertEqual(self.private("time=2020-01-02T03:04:05.000Z").timestamp, 1577934245.0)

    def test_msgids_that_cannot_be_an_xml_attribute_or_are_too_long_are_ignored(self):
        self.sign_on()
        for bad in ["a\x01b", "a<b", "a>b", "a&b", 'a"b', "a'b", "a\x7fb", "é", "a" * 129, ""]:
            self.conn.lineReceived(b"@msgid=" + bad.encode() + b" :bob!b@h PRIVMSG alice :hi")
            self.assertIsNone(self.context.delivered[-1].foreign_id, repr(bad))
        self.assertEqual(self.private("msgid=" + "Zz0-9_+/=.:~" * 10).foreign_id, "Zz0-9_+/=.:~" * 10)

    def test_escaped_tag_values_are_unescaped_once(self):
        self.sign_on()
        self.assertEqual(self.private(r"msgid=a\\sb").foreign_id, "a\\sb")
        self.assertIsNone(self.private(r"msgid=a\sb").foreign_id)                 # a space: not an id

    def test_room_messages_too(self):
        session = self.sign_on()
        session.join("laptop", "#room", "alice")
        self.conn.lineReceived(b":alice!a@h JOIN #room")
        self.conn.lineReceived(f":{SERVER} 366 alice #room :End of NAMES".encode())
        self.conn.lineReceived(f"@time={HOSTILE_TIME};msgid=evil\x01id :bob!b@h PRIVMSG #room :hi".encode())
        event = self.context.events[-1]
        self.assertEqual((event.kind, event.body, event.timestamp, event.foreign_id), ("message", "hi", None, None))
        # The bad msgid is not used: the adapter leaves the id to the bridge, which gives the line the
        # archive's (test_irc.py::test_hostile_tags_are_ignored..., end to end).
        self.assertIsNone(event.stanza_id)


class ConnectionTrouble(IRCSessionCase):
    """
    Attempts drawn from the scheduler: no welcome in time, the server's ERROR,
    a lost connection. The user is told why (a join error for a join not yet
    done, a room message for a room already joined) and told again once in.
    """

    rate = 0.0
    extra = {"registration_timeout": 3.0, "notify_after": 10.0, "reconnect_max_delay": 2.0, "connect_rate": 0.0}
    room = f"#c%{SERVER}"

    def join(self, resource: str = "phone", registration=None):
        self.adapter.join(registration or self.registration, resource, self.room, "alice", None)

    def accept(self, index: int = 0):
        """The attempt under way reaches the server (TCP connected)."""
        self.conn = self.clock.tcpClients[index][2].buildProtocol(None)
        transport = StringTransport()
        self.transports.append(transport)
        self.conn.makeConnection(transport)
        return self.conn

    def end(self, reason, index: int = 0):
        """The connection ends, as the reactor reports it: to the protocol, then to the factory."""
        conn = self.conn
        conn.transport.connected = False
        conn.connectionLost(Failure(reason))
        self.clock.tcpClients[index][2].clientConnectionLost(self.clock.connectors[index], Failure(reason))

    def welcome_and_join(self, channel: str = "#c"):
        self.conn.lineReceived(f":{SERVER} 001 alice :Welcome".encode())
        self.conn.lineReceived(f":alice!u@h JOIN {channel}".encode())
        self.conn.lineReceived(f":{SERVER} 366 alice {channel} :End of NAMES".encode())

    def kinds(self) -> list[tuple[str, str | None]]:
        return [(e.kind, e.condition) for e in self.context.events]

    def test_registration_waits_a_moment_for_the_server_to_speak_first(self):
        self.join()
        self.accept()
        self.assertEqual(self.written(), [])
        self.clock.advance(0.3)
        self.assertEqual(self.written()[:2], ["CAP LS 302", "NICK alice"])

    def test_no_welcome_is_retried_and_the_join_told_then_completed(self):
        self.join()
        self.accept()
        self.clock.advance(3.0)                           # registration deadline
        self.assertTrue(self.conn.transport.disconnecting or self.conn.transport.disconnected)
        self.end(ConnectionLost())
        [event] = self.context.events
        self.assertEqual((event.kind, event.condition), ("join-error", "remote-server-timeout"))
        self.assertIn("did not complete registration (no welcome) within 3 s", event.reason)
        self.assertIn("still trying", event.reason)
        self.assertEqual(self.adapter.scheduler.attempts, 1)
        self.clock.advance(2.0)                           # backoff (at most 1 s after one failure)
        self.assertEqual(self.adapter.scheduler.attempts, 2)
        self.accept()
        self.welcome_and_join()
        kinds = self.kinds()
        self.assertIn(("presence", None), kinds)
        self.assertEqual(self.context.events[-1].kind, "message")
        self.assertIn(f"connected to {SERVER}", self.context.events[-1].body)

    def test_the_servers_error_text_is_what_the_user_reads(self):
        self.join()
        self.accept()
        self.conn.lineReceived(b"ERROR :Closing Link: 127.0.0.1 (Connection limit reached)\x07")
        self.end(ConnectionDone())
        [event] = self.context.events
        self.assertEqual(event.condition, "service-unavailable")
        self.assertIn(f"{SERVER} refused the connection: Closing Link: 127.0.0.1 (Connection limit reached)",
                      event.reason)
        self.assertNotIn("\x07", event.reason)            # through the cleaning path
        self.join("laptop")                                # another resource asks: the same answer
        self.assertEqual([e.resources for e in self.context.events], [["phone"], ["laptop"]])

    def test_a_bare_reset_says_nothing_until_a_reason_comes(self):
        """An ERROR written at accept is lost to a reset when our lines came first: wait for a better answer."""
        self.join()
        self.accept()
        self.end(ConnectionLost())
        self.assertEqual(self.context.events, [])
        self.clock.advance(1.0)
        self.accept()
        self.conn.lineReceived(b"ERROR :Connection refused, too many connections from your IP address")
        self.end(ConnectionDone())
        [event] = self.context.events
        self.assertIn("too many connections from your IP address", event.reason)

    def test_only_resets_are_told_at_notify_after(self):
        self.join()
        self.accept()
        self.end(ConnectionLost())
        self.clock.advance(9.0)
        self.assertEqual(self.context.events, [])
        self.clock.advance(1.0)                            # notify_after
        [event] = self.context.events
        self.assertEqual(event.kind, "join-error")
        self.assertIn(f"cannot connect to {SERVER}", event.reason)

    def test_a_connect_timeout_is_retried(self):
        from twisted.internet.error import TimeoutError as ConnectTimeout
        self.join()
        self.assertEqual(self.clock.tcpClients[0][3], 15.0)          # connect_timeout
        self.clock.tcpClients[0][2].clientConnectionFailed(self.clock.connectors[0], Failure(ConnectTimeout()))
        self.assertEqual(self.context.events, [])                     # a reason may still come
        self.clock.advance(1.0)
        self.assertEqual(self.adapter.scheduler.attempts, 2)

    def test_a_refused_first_connect_fails_the_join_at_once(self):
        self.join()
        self.clock.tcpClients[0][2].clientConnectionFailed(self.clock.connectors[0], Failure(ConnectionRefusedError()))
        self.assertEqual(self.kinds(), [("join-error", "remote-server-not-found")])
        self.assertEqual(self.adapter.sessions, {})
        self.clock.advance(60)
        self.assertEqual(self.adapter.scheduler.attempts, 1)

    def test_a_joined_room_is_told_after_notify_after_and_again_when_back(self):
        self.join()
        self.accept()
        self.welcome_and_join()
        self.context.events.clear()
        self.end(ConnectionDone())                         # the server restarts
        self.assertEqual(self.context.events, [])          # a blip says nothing
        seen = self.adapter.scheduler.attempts
        for _ in range(24):                                # refused while it is down: retried, not given up
            self.clock.advance(0.5)
            if self.adapter.scheduler.attempts > seen:
                seen = self.adapter.scheduler.attempts
                self.clock.tcpClients[0][2].clientConnectionFailed(self.clock.connectors[0],
                                                                   Failure(ConnectionRefusedError()))
        self.assertGreater(self.adapter.scheduler.attempts, 4)
        self.clock.advance(2.0)                            # the next attempt under way
        told = [e for e in self.context.events if e.kind == "message"]
        self.assertEqual(len(told), 1)
        self.assertIn("reconnecting", told[0].body)
        self.assertIn(f"connection to {SERVER} lost", told[0].body)
        self.accept()
        self.welcome_and_join()
        self.assertIn(f"connected to {SERVER}", self.context.events[-1].body)

    def test_leaving_while_waiting_stops_the_attempts(self):
        self.join()
        self.accept()
        self.clock.advance(3.0)
        self.end(ConnectionLost())
        self.adapter.leave(USER, "phone", self.room)
        self.assertEqual(self.adapter.sessions, {})
        self.clock.advance(60)
        self.assertEqual(self.adapter.scheduler.attempts, 1)


class TheGatewaysCap(ConnectionTrouble):
    """With a cap of one connection: the cases above hold, and a second user waits in line."""

    extra = dict(ConnectionTrouble.extra, max_connections_per_server=1)

    def test_beyond_the_cap_users_wait_and_hear_their_place(self):
        self.join()
        self.accept()
        self.welcome_and_join()
        other = Registration(component=self.context.component, jid="bob@example.org")
        self.context.events.clear()
        self.join(registration=other)
        [event] = self.context.events
        self.assertEqual((event.user, event.kind, event.condition), ("bob@example.org", "join-error",
                                                                     "resource-constraint"))
        self.assertIn("limit of 1 connections", event.reason)
        self.assertIn("number 1 in the queue", event.reason)
        self.assertEqual(self.adapter.scheduler.attempts, 1)
        self.adapter.leave(USER, "phone", self.room)       # a place frees up
        self.assertEqual(self.adapter.scheduler.attempts, 2)
        self.assertEqual(len(self.clock.tcpClients), 2)

    def test_stopping_the_gateway_starts_no_attempt_for_those_in_line(self):
        self.join()
        self.accept()
        self.welcome_and_join()
        self.join(registration=Registration(component=self.context.component, jid="bob@example.org"))
        self.adapter.stopService()
        self.assertEqual(self.adapter.scheduler.attempts, 1)
        self.assertEqual(self.adapter.sessions, {})

    def test_the_line_and_the_attempts_under_way_are_metrics(self):
        from gateway import metrics
        self.join()
        self.join(registration=Registration(component=self.context.component, jid="bob@example.org"))
        labels = {"component": self.context.component}
        self.assertEqual(metrics.REGISTRY.get_sample_value("xmpp_gateway_irc_connect_in_flight", labels), 1)
        self.assertEqual(metrics.REGISTRY.get_sample_value("xmpp_gateway_irc_connect_waiting", labels), 1)


# -- what a server can make a connection hold or send --------------------------------


class ServerOffersAreCapped(IRCSessionCase):
    """
    The caps docs/security.md states: CAP names kept from a multi-line CAP LS
    (200), ISUPPORT lines taken (30), CTCP queries answered per window (5 per
    10 s). A server sending more only wants our memory, or our output.
    """

    rate = 0.0

    def connect(self):
        """A connection in registration (CAP LS sent, no welcome yet)."""
        session = self.adapter.session(self.registration, SERVER, "alice")
        session.connect()
        self.conn = self.clock.tcpClients[0][2].buildProtocol(None)
        transport = StringTransport()
        self.transports.append(transport)
        self.conn.makeConnection(transport)
        self.clock.advance(GREETING_WAIT)       # the registration lines go out (the server said nothing first)
        transport.clear()

    def test_documented_numbers(self):
        self.assertEqual((MAX_OFFERED_CAPS, MAX_ISUPPORT_LINES, CTCP_ANSWERS, CTCP_WINDOW), (200, 30, 5, 10.0))

    def test_cap_names_past_200_are_not_kept_nor_requested(self):
        self.connect()
        for line in range(MAX_OFFERED_CAPS // 20 + 5):          # 300 names, 20 a line, "more follows"
            names = " ".join(f"cap{line}-{i}" for i in range(20))
            self.conn.lineReceived(f":{SERVER} CAP * LS * :{names}".encode())
        self.conn.lineReceived(f":{SERVER} CAP * LS * :multi-prefix".encode())    # the 301st
        self.assertEqual(len(self.conn._offered), MAX_OFFERED_CAPS)
        self.conn.lineReceived(f":{SERVER} CAP * LS :server-time".encode())
        self.assertEqual(self.written(), ["CAP REQ :server-time"])

    def test_cap_names_within_the_cap_are_requested(self):
        self.connect()
        self.conn.lineReceived(f":{SERVER} CAP * LS * :multi-prefix cap-a cap-b".encode())
        self.conn.lineReceived(f":{SERVER} CAP * LS :server-time".encode())
        self.assertEqual(self.written(), ["CAP REQ :server-time multi-prefix"])

    def test_isupport_lines_past_30_are_ignored(self):
        self.sign_on()
        for n in range(MAX_ISUPPORT_LINES + 10):
            self.conn.lineReceived(f":{SERVER} 005 alice TOK{n}=v{n} :are supported by this server".encode())
        supported = self.conn.supported
        self.assertEqual(supported.getFeature(f"TOK{MAX_ISUPPORT_LINES - 1}"), (f"v{MAX_ISUPPORT_LINES - 1}",))
        self.assertFalse(supported.hasFeature(f"TOK{MAX_ISUPPORT_LINES}"))
        self.assertFalse(supported.hasFeature(f"TOK{MAX_ISUPPORT_LINES + 9}"))

    def test_ctcp_answers_are_5_per_10_seconds(self):
        self.sign_on()

        def query(n: int) -> list[str]:
            self.transports[-1].clear()
            for _ in range(n):
                self.conn.lineReceived(b":eve!e@h PRIVMSG alice :\x01VERSION\x01")
            return [line for line in self.written() if line.startswith("NOTICE eve :\x01VERSION")]

        self.assertEqual(len(query(CTCP_ANSWERS + 20)), CTCP_ANSWERS)
        self.clock.advance(CTCP_WINDOW / 2)
        self.assertEqual(query(3), [])                              # the same window
        self.clock.advance(CTCP_WINDOW / 2 + 0.1)
        self.assertEqual(len(query(CTCP_ANSWERS + 3)), CTCP_ANSWERS)  # a new window
        self.transports[-1].clear()
        self.conn.lineReceived(b":eve!e@h PRIVMSG alice :\x01ACTION waves\x01")   # actions are not answers
        self.assertEqual(self.context.delivered[-1].body, "/me waves")


class ConversationsOnTheWire(IRCSessionCase):
    """Corrections, replies, reactions and typing as IRC lines; the echo that gives our lines' msgids."""

    rate = 0.0

    def sign_on_with(self, caps: str):
        session = self.sign_on()
        self.conn.lineReceived(f":{SERVER} CAP alice ACK :{caps}".encode())
        self.transports[-1].clear()
        self.context.refs = []
        self.context.message_ref = lambda *args: self.context.refs.append(args)
        return session

    def test_the_echo_of_a_first_line_gives_its_msgid_matched_by_text(self):
        session = self.sign_on_with("message-tags echo-message")
        for i, body in enumerate(("refused line", "two\nlines")):
            message = self.message(body)
            message.xmpp_id = f"x{i}"
            self.send(message)
        self.conn.lineReceived(b"@msgid=m2 :alice!a@h PRIVMSG bob :lines")       # not a first line: nothing
        self.conn.lineReceived(b"@msgid=m1 :alice!a@h PRIVMSG bob :two")         # the refused one never echoes
        self.assertEqual(self.context.refs, [(USER, f"bob%{SERVER}", "x1", "m1")])
        self.assertEqual(self.context.delivered, [])                             # echoes are not shown again
        self.assertEqual(session._echoes["bob"], type(session._echoes["bob"])())

    def test_without_echo_message_nothing_is_awaited(self):
        session = self.sign_on_with("message-tags")
        message = self.message("hello")
        message.xmpp_id = "x"
        self.send(message)
        self.assertEqual(session._echoes, {})

    def test_tag_values_are_escaped_and_typing_needs_message_tags(self):
        self.sign_on_with("message-tags")
        message = self.message("yes")
        message.reply_to, message.ref = "x", "a;b c"
        self.send(message)
        self.assertEqual(self.written(), ["@+draft/reply=a\\:b\\sc PRIVMSG bob :yes"])
        self.transports[-1].clear()
        typing = self.message(None)
        typing.chat_state = "composing"
        self.adapter.typing(typing, self.registration)
        self.assertEqual(self.written(), ["@+typing=active TAGMSG bob"])

    def test_without_message_tags_no_tagmsg_is_sent(self):
        self.sign_on_with("server-time")
        typing = self.message(None)
        typing.chat_state = "composing"
        self.adapter.typing(typing, self.registration)
        reaction = self.message(None)
        reaction.reaction_to, reaction.reactions, reaction.ref, reaction.ref_body = "x", ["👍"], "m", "hi"
        self.send(reaction)
        self.assertEqual(self.written(), ["PRIVMSG bob :Reacted 👍 to “hi”"])

    def test_room_lines_await_their_echo_too(self):
        session = self.sign_on_with("message-tags echo-message")
        session.join("laptop", "#room", "alice")
        self.conn.lineReceived(b":alice!a@h JOIN #room")
        self.conn.lineReceived(f":{SERVER} 366 alice #room :End of NAMES".encode())
        message = OutboundMessage(component=self.context.component, user=USER, recipient=f"#room%{SERVER}",
                                  body="hello room", kind="groupchat", xmpp_id="r1")
        self.send(message)
        self.conn.lineReceived(b"@msgid=m9 :alice!a@h PRIVMSG #room :hello room")
        self.assertEqual(self.context.refs, [(USER, f"#room%{SERVER}", "r1", "m9")])

    def test_hostile_reaction_and_typing_tags_are_bounded_or_ignored(self):
        session = self.sign_on_with("message-tags")
        session.join("laptop", "#room", "alice")
        self.conn.lineReceived(b":alice!a@h JOIN #room")
        self.conn.lineReceived(f":{SERVER} 366 alice #room :End of NAMES".encode())
        before = len(self.context.events)
        huge = "\U0001F600" * 500
        for tags in (f"+draft/reply=x\x01y;+draft/react={huge}", "+draft/react=\x02\x03", "+typing=sideways",
                     f"+draft/reply=m1;+draft/react={huge}"):
            self.conn.lineReceived(f"@{tags} :bob!b@h TAGMSG #room".encode())
        events = self.context.events[before:]
        self.assertEqual(len(events), 1)            # only the last: a sane reference, a reaction cut to size
        self.assertEqual((events[0].ref, len(events[0].reactions[0])), ("m1", 32))

    def test_a_correction_or_reply_the_gateway_does_not_remember_goes_out_whole(self):
        self.sign_on_with("message-tags")
        correction = self.message("fixed text")
        correction.correction_of = "forgotten"                     # no ref_body: not remembered
        self.send(correction)
        answer = self.message("late answer")
        answer.reply_to = "forgotten"                              # no ref, no quote
        self.send(answer)
        self.assertEqual(self.written(), ["PRIVMSG bob :* fixed text", "PRIVMSG bob :late answer"])
