"""
The synchronous send path of a room message (XMPP → IRC, issue 12) gives exactly
what the Deferred path gives: the same IRC lines, the same reflection and the
same stanza errors, on random and hostile groupchat stanzas, through the real
stack in memory (component, MUC handler, bridge, IRC adapter, SQLite registry
with the room archive). ``Bridge.fast_direct = False`` is the reference (the
Deferred chain); the same stanzas go through both, and what each writes is compared.
"""

from __future__ import annotations

import random
import re
import shutil
import tempfile

import pytest_twisted
from twisted.internet import defer

from gateway.adapters.irc import text
from gateway.bridge.bridge import Bridge
from gateway.interfaces import NOT_NOW
from gateway.model import OutboundMessage, SendResult
from tests.unit.wire import DOMAIN
from tests.benchmarks.irc_cpu import CHANNEL, NICK, RESOURCE, SERVER, USER, Bench

ALPHABET = ["a", "b", " ", "&", "<", ">", "'", '"', "\u00e9", "\u20ac", "\U0001F600", "\u05d0", "\t", "\n", "\r",
            "\ufdd0", "/me ", "s/a/b/", ":", "%", "@", "\\"]


def _body(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.1:
        return "x" * rng.choice([300, 400, 600, 1500])                  # split into several lines
    if kind < 0.15:
        return rng.choice(["", " ", "\n", " \n \r\n"])                  # nothing to send
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 60)))


def _esc(value: str) -> str:
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")
            .replace('"', "&quot;").replace("\r", "&#13;").replace("\t", "&#9;"))


def _stanzas(rng: random.Random, n: int, room_jid: str, domain: str, private: bool = True) -> list[str]:
    """
    Groupchat messages as clients send them, with the odd hostile or malformed one; with ``private``,
    a few private messages to an occupant (through the outbox: on the registry's time, not the clock's).
    """
    out = []
    sent_ids: list[str] = []
    for i in range(n):
        to = room_jid
        r = rng.random()
        if r < 0.03:
            to = f"#other%{SERVER}@{domain}"                             # a room not joined
        elif r < 0.05:
            to = f"#bad\\20room%{SERVER}@{domain}"                        # a room name that is none
        elif r < 0.07 and private:
            to = f"{room_jid}/bob"                                       # private, to an occupant
        mtype = rng.choice(["groupchat"] * 12 + ["error", "chat", "normal"])
        mid = rng.choice([f"m{i}", f"m{i}", f"m{i}", "", "x" * 300, "a'b"])
        if mid:
            sent_ids.append(mid)
        parts = []
        body = _body(rng)
        if rng.random() < 0.9:
            parts.append(f"<body>{_esc(body)}</body>")
        if rng.random() < 0.05:
            parts.append(f"<subject>{_esc(_body(rng))}</subject>")
        if rng.random() < 0.08:
            parts.append(f"<{rng.choice(['composing', 'active', 'paused', 'bogus'])} "
                         "xmlns='http://jabber.org/protocol/chatstates'/>")
        if rng.random() < 0.3:
            oid = rng.choice([f"o{i}", "", "y" * 201, "o\ufdd0", "o&amp;p"])
            parts.append(f"<origin-id xmlns='urn:xmpp:sid:0' id='{oid}'/>")
        ref = rng.choice(sent_ids) if sent_ids and rng.random() < 0.7 else rng.choice(["", "z" * 300, "nope"])
        r = rng.random()
        if r < 0.06:
            parts.append(f"<replace xmlns='urn:xmpp:message-correct:0' id='{_esc(ref)}'/>")
        elif r < 0.12:
            parts.append(f"<reply xmlns='urn:xmpp:reply:0' to='{room_jid}/{rng.choice(['bob', NICK, 'zed'])}' "
                         f"id='{_esc(ref)}'/>")
            if rng.random() < 0.5:
                end = rng.choice([0, 3, len(body), len(body) + 5])
                parts.append("<fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'>"
                             f"<body start='0' end='{end}'/></fallback>")
        elif r < 0.17:
            inner = "".join(f"<reaction>{_esc(x)}</reaction>"
                            for x in rng.sample(["\u2764", "\U0001F44D", "", "long" * 10, "a\rb"], rng.randint(0, 3)))
            parts.append(f"<reactions xmlns='urn:xmpp:reactions:0' id='{_esc(ref)}'>{inner}</reactions>")
        if rng.random() < 0.05:
            parts.append("<x xmlns='jabber:x:conference' jid='somewhere@else'/>")
        rng.shuffle(parts)
        idattr = f" id='{_esc(mid)}'" if mid else ""
        out.append(f"<message from='{USER}/{RESOURCE}' to='{_esc(to)}' type='{mtype}'{idattr}>{''.join(parts)}"
                   "</message>")
    return out


_STANZA_ID = re.compile(rb"(<stanza-id [^>]*id=)('[^']*'|\"[^\"]*\")")


def _normalised(data: bytes) -> bytes:
    """What a run wrote, with the archive's random stanza ids numbered in order of appearance."""
    seen: dict[bytes, bytes] = {}
    return _STANZA_ID.sub(lambda m: m.group(1) + seen.setdefault(m.group(2), b"'sid%d'" % len(seen)), data)


@defer.inlineCallbacks
def _run(stanzas: list[str], fast: bool, chunk: int = 7, throttle: float = 0.0):
    work = tempfile.mkdtemp(prefix="gwsendfast-", dir="/tmp")
    bench = Bench(work, archive=True)
    bench.wire.bridge.fast_direct = fast
    bench.wire.bridge.adapter.config.update(throttle_rate=throttle, throttle_burst=5)
    try:
        yield bench.start()
        yield bench.xmpp_to_irc(1, 0)                 # the registration is cached from here on
        bench.xmpp.keep = bench.irc_out.keep = True
        for start in range(0, len(stanzas), chunk):
            bench.wire.feed("".join(stanzas[start:start + chunk]))
            bench.clock.advance(1 if throttle else 0)          # with a throttle, a few lines drain
        # Everything here ran at once (a cached registration, a connected session); the odd error
        # stanza or private message goes through the registry: give them time.
        yield bench.until(lambda: bench.wire.registry.settled().called, "the registry")
        for _ in range(20 if not throttle else 400):
            bench.clock.advance(1)
            yield bench.wire.registry.settled()
        yield bench.wire.registry.settled()
        return _normalised(bench.xmpp.value()), bench.irc_out.value()
    finally:
        bench.wire.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest_twisted.inlineCallbacks
def test_random_and_hostile_room_messages_give_what_the_deferred_path_gives():
    rng = random.Random(1212)
    stanzas = _stanzas(rng, 600, f"{CHANNEL}%{SERVER}@{DOMAIN}", DOMAIN)
    slow = yield _run(stanzas, fast=False)
    fast = yield _run(stanzas, fast=True)
    assert slow[1].count(b"PRIVMSG ") > 300 and slow[0].count(b"<error") > 10      # the corpus says something
    assert fast[1] == slow[1]
    assert fast[0] == slow[0]


@pytest_twisted.inlineCallbacks
def test_behind_a_throttle_and_a_full_queue_too():
    """Rate 2 lines/s and a small queue: it fills (QueueFull, an error to the sender) and drains alike."""
    from gateway.adapters.irc import client
    rng = random.Random(2121)
    stanzas = _stanzas(rng, 400, f"{CHANNEL}%{SERVER}@{DOMAIN}", DOMAIN, private=False)
    bound, client.MAX_PENDING_LINES = client.MAX_PENDING_LINES, 40     # reached within the corpus
    try:
        slow = yield _run(stanzas, fast=False, chunk=20, throttle=2.0)
        fast = yield _run(stanzas, fast=True, chunk=20, throttle=2.0)
    finally:
        client.MAX_PENDING_LINES = bound
    assert b"send queue full" in slow[0]                       # the corpus reaches the bound
    assert fast[1] == slow[1]
    assert fast[0] == slow[0]


@pytest_twisted.inlineCallbacks
def test_a_room_message_to_a_connected_session_is_sent_without_a_deferred():
    work = tempfile.mkdtemp(prefix="gwsendfast-", dir="/tmp")
    bench = Bench(work, archive=True)
    try:
        yield bench.start()
        yield bench.xmpp_to_irc(1, 0)
        bench.irc_out.keep = True
        bridge = bench.wire.bridge
        message = OutboundMessage(component=bridge.component, user=USER, recipient=f"{CHANNEL}%{SERVER}",
                                  body="hello", xmpp_id="h1", resource=RESOURCE, kind="groupchat")
        result = bridge.send_direct_now(message)
        assert isinstance(result, SendResult) and result.parts == 1
        assert bench.irc_out.value().endswith(b"PRIVMSG #bench :hello\r\n")
        # Not connected any more: the adapter says NOT_NOW (the bridge then takes the Deferred path), and
        # nothing of the message went anywhere.
        session = next(iter(bridge.adapter.sessions.values()))
        conn, session.conn = session.conn, None
        later = OutboundMessage(component=bridge.component, user=USER, recipient=f"{CHANNEL}%{SERVER}",
                                body="later", xmpp_id="h2", resource=RESOURCE, kind="groupchat")
        try:
            assert bridge.adapter.send_now(later, bridge.known_registration(USER)) is NOT_NOW
        finally:
            session.conn = conn
        assert bench.irc_out.count == 2
        yield bench.wire.registry.settled()
    finally:
        bench.wire.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_the_reference_path_is_there():
    assert Bridge.fast_direct is True


def _message_lines_by_walk(command: str, target: str, body: str, nick: str = "", ctcp: str | None = None):
    """text.message_lines without its one-line fast path, as the reference."""
    prefix = f"{command} {target} :"
    wrap = (f"\x01{ctcp} ", "\x01") if ctcp else ("", "")
    budget = text.LINE_LIMIT - 2 - len(prefix.encode()) - text.RELAY_OVERHEAD - len(wrap[0]) - len(wrap[1])
    budget = max(budget, 32)
    lines = []
    for raw in body.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        raw = raw.replace("\x00", "")
        if not raw.strip():
            continue
        for chunk in text.split_utf8(raw, budget):
            lines.append(f"{prefix}{wrap[0]}{chunk}{wrap[1]}")
    return lines


def test_message_lines_gives_what_the_split_gives():
    rng = random.Random(5)
    alphabet = ["a", " ", "\u00e9", "\u20ac", "\U0001F600", "\n", "\r", "\x00", "\t", "\u2028", "\x85", "\u3000"]
    targets = ["#c", "#" + "c" * 50, "nick", "#" + "\u00e9" * 200, "#" + "x" * 600]
    for _ in range(6000):
        size = rng.choice([0, 1, 2, 5, 40, 300, 360, 370, 380, 390, 400, 900])
        body = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, size)))
        if rng.random() < 0.3:
            body = "x" * rng.randint(340, 400)                    # about the limit of one line
        target = rng.choice(targets)
        ctcp = rng.choice([None, None, "ACTION"])
        assert text.message_lines("PRIVMSG", target, body, "alice", ctcp) == \
            _message_lines_by_walk("PRIVMSG", target, body, "alice", ctcp), (target, body, ctcp)


def _adapter(**extra):
    from gateway.adapters.irc import IRCAdapter
    from tests.unit.test_irc_session import Recorder
    options = {o.key: o.default for o in IRCAdapter.options}
    options.update(servers={SERVER: {"host": "127.0.0.1", "port": 6667, "tls": False}}, **extra)
    return IRCAdapter(options, Recorder())


def test_normalize_address_remembers_only_what_it_would_answer_again():
    rng = random.Random(9)
    pieces = ["#", "&", "+", "!", "a", "B", "%", "irc.test", "IRC.Test", "localhost", ":6697", " ", "\u00e9", ".",
              "-", "x" * 300, "[", "\\", "|", "\t"]
    for extra in ({}, {"fixed_server": SERVER}, {"allowed_servers": [SERVER]}):
        memo, plain = _adapter(**extra), _adapter(**extra)
        samples = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))) for _ in range(3000)]
        for value in samples + samples:                        # each asked twice: the second from memory
            try:
                expected = plain._normalize(value)
            except Exception as e:
                expected = (type(e), str(e))
            try:
                got = memo.normalize_address(value)
            except Exception as e:
                got = (type(e), str(e))
            assert got == expected, (value, extra)
        assert len(memo._normalized) <= 4096 and all(len(k) <= 256 for k in memo._normalized)


from tests.unit.test_irc_session import IRCSessionCase  # noqa: E402
from gateway.adapters.irc.client import MAX_PENDING_LINES, QueueFull  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402


class LinesAreWrittenAsTwistedWritesThem(IRCSessionCase):
    rate = 0.0

    def test_the_usual_line_gives_the_bytes_of_irc_client_send_line(self):
        session = self.sign_on()
        reference = StringTransport()
        rng = random.Random(4)
        alphabet = ["a", " ", ":", "\u00e9", "\U0001F600", "\x10", "\x00", "\r", "\n", "\x01", "\t"]
        for _ in range(3000):
            line = "PRIVMSG #c :" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
            self.transports[-1].clear()
            reference.clear()
            session.conn.send_lines([line])
            conn_transport, session.conn.transport = session.conn.transport, reference
            session.conn.sendLine(line)                     # Twisted's IRCClient.sendLine
            session.conn.transport = conn_transport
            self.assertEqual(self.transports[-1].value(), reference.value(), repr(line))


class RoomLinesKeepTheQueueBound(IRCSessionCase):
    rate = 1.0
    burst = 1

    def test_room_lines_wait_behind_the_throttle_and_are_bounded_like_a_message(self):
        session = self.sign_on()
        conn = session.conn
        conn.send_room_lines(["PRIVMSG #c :one", "PRIVMSG #c :two"])
        self.assertEqual(self.written(), ["PRIVMSG #c :one"])
        self.clock.advance(1.0)
        self.assertEqual(self.written(), ["PRIVMSG #c :one", "PRIVMSG #c :two"])
        conn.send_room_lines(["PRIVMSG #c :x"] * (MAX_PENDING_LINES - 1))
        self.assertRaises(QueueFull, conn.send_room_lines, ["PRIVMSG #c :y"] * 2)
        self.assertRaises(QueueFull, conn.send_message, ["PRIVMSG #c :y"] * 2)
        self.lose()                                         # what waits is dropped, nothing fails
        self.assertIsNone(conn._pending)
