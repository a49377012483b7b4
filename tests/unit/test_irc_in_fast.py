"""
The short path of the usual IRC line (IRC → XMPP, issue 12: client._ROOM_LINE to
Session.on_room_line) gives exactly what the general parser and Twisted's
dispatch give: the same room events, the same bytes on the XMPP stream, the
same bytes back to the IRC server (CTCP answers) and the same counts of bad and
overlong lines, on random and hostile lines (tags, CTCP, formatting, odd
spacing, non-UTF-8, very long lines, colons, prefixes without ``!`` or ``@``,
channel names with odd characters), read in chunks cut anywhere. The real stack
in memory (component, bridge, room archive in SQLite, IRC adapter);
the reference is the code before the short path: the line-by-line walk of
``IRCConnection.dataReceived``, ``lineReceived`` into the general parser and the uncached
``room_message_strings`` (both copied below as they were), so the split, the CR
handling and the stanza writer's caches are compared too, not only the parser.
"""

from __future__ import annotations

import random
import re
import shutil
import tempfile

import pytest_twisted
from twisted.internet import defer

from gateway.adapters.irc import client, text
from gateway.adapters.irc.client import MAX_LINE, IRCConnection
from gateway.xmpp import messages
from gateway.xmpp.escaping import EscapingError, escape
from gateway.xmpp.muc import NS_SID, _extras
from gateway.xmpp.stanzas import quote_attr, xml_safe
from tests.benchmarks.irc_cpu import CHANNEL, NICK, RESOURCE, SERVER, USER, Bench

#: A second channel the user joins and the server never answers: joined, not ready.
NOT_READY = "#waiting"

CHARS = ["a", "b", "Z", " ", "  ", ":", " :", "&", "<", ">", "'", '"', "\\", ";", "=", "!", "@", "#", "%", "/",
         "\u00e9", "\u20ac", "\U0001F600", "\u05d0", "\t", "\x01", "\x02", "\x03", "\x034,5", "\x0f", "\x1d",
         "\x7f", "\x85", "\u00a0", "\ufdd0", "\ufffe", "\x00", "\x0b", "\x1c"]


def _reference_data_received(self, data: bytes) -> None:
    """IRCConnection.dataReceived before the short path (37a710c), as the reference."""
    if self._skipping:
        cut = data.find(b"\n")
        if cut < 0:
            return
        self._skipping = False
        data = data[cut + 1:]
    buf = self._inbuf + data if self._inbuf else data
    start = 0
    while not self._lost and not getattr(self.transport, "disconnecting", False):
        end = buf.find(b"\n", start)
        if end < 0:
            break
        line, start = buf[start:end], end + 1
        if len(line) > MAX_LINE:
            self.overlong += 1
            continue
        self.lineReceived(line.replace(b"\r", b""))
    rest = buf[start:]
    if len(rest) > MAX_LINE:
        self.overlong += 1
        self._skipping, rest = True, b""
    self._inbuf = rest


def _reference_line_received(self, line):
    """IRCConnection.lineReceived before the short path (37a710c), as the reference."""
    if self._hello is not None:
        self._sign_on()
    if isinstance(line, bytes):
        line = self._decode(line)
    parsed = client.parse_line(line)
    if parsed is None:
        return
    self.tags, prefix, command, params = parsed
    self.handleCommand(command, prefix, params)


def _reference_room_message_strings(domain: str, event, localpart=lambda address: address, cache=None) -> list[str]:
    """muc.room_message_strings before its caches (37a710c), with escape_text's three replaces, as the reference."""
    try:
        room_jid = f"{escape(xml_safe(localpart(event.room)))}@{domain}"
    except EscapingError:
        return []
    nick = xml_safe(event.nick)
    sender = quote_attr(f"{room_jid}/{nick}" if nick else room_jid)
    message_id = f" id={quote_attr(event.message_id)}" if event.message_id else ""
    text_ = (xml_safe(event.body) or '').replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    body = "" if event.body is None and (event.chat_state or event.reaction_to) else f"<body>{text_}</body>"
    if event.origin_id:
        body += f"<origin-id xmlns='{NS_SID}' id={quote_attr(event.origin_id)}/>"
    if event.stanza_id:
        body += f"<stanza-id xmlns='{NS_SID}' id={quote_attr(xml_safe(event.stanza_id))} by={quote_attr(room_jid)}/>"
    head = f"<message type='groupchat' from={sender}{message_id} to="
    tail = f">{body}{_extras(room_jid, event)}</message>"
    return [head + quote_attr(f"{event.user}/{r}" if r else event.user) + tail for r in event.resources]


def _text(rng: random.Random, most: int = 40) -> str:
    return "".join(rng.choice(CHARS) for _ in range(rng.randint(0, most)))


def _nick(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.55:
        return rng.choice(["bob", "carol", "Dave", "[x]", "a_b-c", "`q", "{b}|", "z9", "bob^"])
    if r < 0.65:
        return rng.choice([NICK, NICK.upper()])                          # our own nick: an echo with the cap
    if r < 0.75:
        return "n" * rng.choice([127, 128, 129, 300])                    # at and over the name bound
    if r < 0.85:
        return rng.choice(["b\u00e9b", "\u05d0\u05d1", "x\u00a0y", "a:b", "a@b", "a\x02b", "a\x7fb", "", "\U0001F600"])
    return _text(rng, 8).replace(" ", "")


def _prefix(rng: random.Random) -> str:
    r = rng.random()
    nick = _nick(rng)
    if r < 0.75:
        return f"{nick}!~{rng.choice(['u', 'x@y', '', 'u!v'])}@{rng.choice(['peer.example', 'h', '', 'a@b'])}"
    if r < 0.85:
        return nick                                                       # no ! and no @
    if r < 0.9:
        return f"{nick}@host"
    if r < 0.95:
        return "irc.test"                                                 # the server itself
    return f"{nick}!{_text(rng, 6).replace(' ', '')}"


def _tags(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.5:
        return ""
    choices = ["msgid=abc{}", "msgid=a\\sb", "msgid=<x>", "msgid=", "time=2020-05-06T07:08:09.123Z",
               "time=2020-13-40T99:99:99Z", "time=2150-01-01T00:00:00Z", "time=bogus", "+draft/reply=m{}",
               "+draft/reply=<&>", "+draft/reply=abc{}", "+draft/react=\U0001F44D", "+typing=active", "a=b\\:c\\\\d\\", "k", "=", "x=" + "v" * 50, "msgid=\u00e9"]
    tags = ";".join(rng.choice(choices).format(rng.randint(0, 9)) for _ in range(rng.randint(1, 4)))
    return "@" + tags + rng.choice([" ", " ", " ", "  "])


def _target(rng: random.Random) -> str:
    return rng.choice([CHANNEL] * 8 + [CHANNEL.upper(), "#Bench", "#other", NOT_READY, NOT_READY.upper(), NICK, "bob",
                       "#bench,#x", "&bench",
                                       "+bench", "!bench", "#b\u00e9nch", "#be:nch", "#", "", "#bench\x07"])


def _line(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.03:
        return b":bob!~b@h PRIVMSG #bench :" + b"y" * rng.choice([client.MAX_LINE, client.MAX_LINE + 10])
    if r < 0.06:
        return rng.choice([b":bob!~b@h PRIVMSG #bench :caf\xe9", b":b\xe9b!~b@h PRIVMSG #bench :x",
                           b"\xff\xfe", b":bob!~b@h PRIVMSG #bench :\xc3"])         # not UTF-8
    if r < 0.09:
        return rng.choice([b"", b" ", b":", b"@", b"@a", b":bob", b"PING :x", b":irc.test 404 alice #bench :no",
                           b":bob!b@h JOIN #bench", b":bob!b@h PART #bench :bye", b":carol!c@h QUIT :q"])
    command = rng.choice(["PRIVMSG"] * 6 + ["NOTICE"] * 2 + ["privmsg", "Notice", "TAGMSG"])
    s = rng.random()
    if s < 0.8:
        sep = " "
    else:
        sep = rng.choice(["  ", " \u00a0", "\t"])
    body_kind = rng.random()
    if body_kind < 0.05:
        body = "w" * rng.choice([text.TEXT_LIMIT - len(text.NOTICE_MARK), text.TEXT_LIMIT - len(text.NOTICE_MARK) + 1,
                                 text.TEXT_LIMIT, text.TEXT_LIMIT + 1, 6000])
    elif body_kind < 0.12:
        body = "\x01" + rng.choice(["ACTION waves", "VERSION", "PING 1", "ACTION", "DCC x"]) + rng.choice(["\x01", ""])
    elif body_kind < 0.15:
        body = rng.choice(["", " ", ":", "a\x01b\x01c", "boom", "x boom"])
    else:
        body = _text(rng) or "hi"
    trailing = rng.choice([" :", " :", " :", " :", " ", "  :", " ::", ":"])
    params = _target(rng)
    if rng.random() < 0.05:
        params += rng.choice([" extra", " :", " "])
    start = f":{_prefix(rng)}" if rng.random() < 0.95 else ""
    line = f"{_tags(rng)}{start}{sep}{command}{sep}{params}{trailing}{body}"
    end = rng.choice(["", "", "\r", "\r\r"])
    if rng.random() < 0.03:
        line = line[:len(line) // 2] + "\r" + line[len(line) // 2:]
    return (line + end).encode("utf-8", "surrogatepass")


def _usual_line(rng: random.Random) -> bytes:
    """A line of the short path's kind with at most one thing at or past one of its bounds."""
    nick, body, command = rng.choice(["bob", "carol", "x", NICK]), "usual text", rng.choice(["PRIVMSG", "NOTICE"])
    tags, target, cr = rng.choice(["", "", "@msgid=m1 ", "@time=2020-05-06T07:08:09Z;msgid=q "]), CHANNEL, ""
    r = rng.randrange(8)
    if r == 0:
        body = "v" * (text.TEXT_LIMIT - len(text.NOTICE_MARK) + rng.choice([-1, 0, 1, 2]))
    elif r == 1:
        nick = "n" * (text.NAME_LIMIT + rng.choice([-1, 0, 1]))
    elif r == 2:
        body = rng.choice(["a\x01b", "\x01ACTION x\x01", "a\x02b", "a\x1fb", "a\x7fb", "a\x85b", "a\x9fb", "a\xa0b",
                           "a\ufdd0b", "a\ufdefb", "a\ufdf0b", "a\ufffeb", "a\ufffdb", "a\tb", "a\x00b"])
    elif r == 3:
        nick = rng.choice(["a@b", "a\x21b", "a\x7fb", "a\u00e9", "a b", "\x22q", "~", "a\x1fb", "?", "A"])
    elif r == 4:
        cr = rng.choice(["\r", "\r\r", "mid"])
    elif r == 5:
        command = rng.choice(["PRIV\rMSG", "NOT\rICE", "PRIVMSG\r", "privmsg"])
    elif r == 6:
        target = rng.choice([NOT_READY, "#bench:x", "#BENCH", "#b\u00e9nch"])
    elif r == 7:                                       # a reaction to a line with a msgid, or a reply to one
        ref = rng.choice(["m1", "q", "nope"])
        if rng.random() < 0.5:
            return f"@+draft/reply={ref};+draft/react=\U0001F44D :{nick}!u@h TAGMSG {CHANNEL}".encode()
        tags = f"@+draft/reply={ref} "
    line = f"{tags}:{nick}!u@h {command} {target} :{body}"
    if cr == "mid":
        line, cr = line[:5] + "\r" + line[5:], ""
    return (line + cr).encode("utf-8")


def _reads(rng: random.Random, lines: list[bytes]) -> list[bytes]:
    """The lines as they come off a socket: joined, then cut anywhere (CR LF and overlong lines across reads)."""
    data = b"".join(line + b"\n" for line in lines)
    reads, i = [], 0
    while i < len(data):
        n = rng.choice([1, 7, 60, 500, 4000, 20000])
        reads.append(data[i:i + n])
        i += n
    return reads


_STANZA_ID = re.compile(rb"(<stanza-id [^>]*id=)('[^']*'|\"[^\"]*\")")
_RANDOM_ID = re.compile(rb"id='[0-9a-f]{32}'")


def _normalised(data: bytes) -> bytes:
    """What a run wrote, with the random ids of private messages and typing notifications left out."""
    return _RANDOM_ID.sub(b"id='random'", data)


@defer.inlineCallbacks
def _run(reads: list[bytes], fast: bool, caps: set[str]):
    work = tempfile.mkdtemp(prefix="gwinfast-", dir="/tmp")
    bench = Bench(work, archive=True)
    events: list[str] = []
    bridge = bench.wire.bridge
    room_event = bridge.room_event

    def recording(event):
        events.append(repr(event))                # as it came from the adapter, before the bridge fills it in
        if event.body and "boom" in event.body:
            raise ValueError("a handler failing on a line")        # counted as a bad line by either path
        if event.body and "bye-now" in event.body:
            bench.irc.transport.loseConnection()   # closing mid-read: the rest of the read stays unread
        room_event(event)

    bridge.room_event = recording
    saved = IRCConnection.dataReceived, IRCConnection.lineReceived, messages.room_message_strings
    if not fast:
        IRCConnection.dataReceived = _reference_data_received
        IRCConnection.lineReceived = _reference_line_received
        messages.room_message_strings = _reference_room_message_strings
    try:
        yield bench.start()
        bench.irc.caps |= caps
        bench.wire.feed(f"<presence from='{USER}/{RESOURCE}' to='{NOT_READY}%{SERVER}@{bench.domain}/{NICK}'>"
                        "<x xmlns='http://jabber.org/protocol/muc'/></presence>")
        # Another resource in the room (two recipients per line), and a room joined that is not ready.
        bench.wire.feed(f"<presence from='{USER}/laptop' to='{bench.room_jid}/{NICK}'>"
                        "<x xmlns='http://jabber.org/protocol/muc'/></presence>")
        session = next(iter(bench.wire.bridge.adapter.sessions.values()))
        # ... and the second resource's history read (its live lines wait for it until then).
        yield bench.until(lambda: NOT_READY in session.rooms and len(session.rooms[CHANNEL].resources) == 2
                          and (USER, "laptop", f"{CHANNEL}%{SERVER}") not in bench.wire.bridge.archive._joins, "the joins")
        yield bench.until(lambda: bench.wire.registry.settled().called, "the registry")
        bench.clock.advance(1)
        bench.xmpp.clear()
        bench.irc_out.clear()
        bench.xmpp.keep = bench.irc_out.keep = True
        events.clear()
        for data in reads:
            bench.irc.dataReceived(data)
            bench.clock.advance(0)
        yield bench.until(lambda: bench.wire.registry.settled().called, "the registry")
        for _ in range(5):
            bench.clock.advance(1)
            yield bench.wire.registry.settled()
        return (events, _normalised(bench.xmpp.value()), bench.irc_out.value(), bench.irc.bad_lines,
                bench.irc.overlong, bench.irc._inbuf, bench.irc._skipping)
    finally:
        IRCConnection.dataReceived, IRCConnection.lineReceived, messages.room_message_strings = saved
        # Wire.stop, but the writes the stop itself makes (the closed IRC connection's session) are
        # let in before the registry closes, so none lands on a closed one.
        wire = bench.wire
        wire.stream.running = False
        wire.bridge.stopService()
        wire.xs.connectionLost(None)
        for _ in range(3):
            yield wire.registry.settled()
        wire.registry.close()
        shutil.rmtree(work, ignore_errors=True)


_STANZA = re.compile(rb"<(message|presence|iq)\b[^>]*?/>|<(message|presence|iq)\b.*?</\2>", re.DOTALL)


def _stanzas(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """
    The groupchat stanzas in the order written, and the others (but pings) sorted: a private message goes
    through the registry's thread, so where it falls among the room lines is the thread's timing.
    """
    found = [m.group(0) for m in _STANZA.finditer(data)]
    assert sum(map(len, found)) == len(data)
    # The archive's stanza ids (random) numbered in the order of the room lines. The join's subject
    # waits for the room's history (a read in the registry's thread): it may come before or after.
    seen: dict[bytes, bytes] = {}
    room = [_STANZA_ID.sub(lambda m: m.group(1) + seen.setdefault(m.group(2), b"'sid%d'" % len(seen)), s)
            for s in found if b"type='groupchat'" in s and b"<subject>" not in s]
    # The stream's own keepalive pings (random ids, on the clock): not about the lines.
    return room, sorted(_STANZA_ID.sub(rb"\1'sid'", s) for s in found
                        if b"type='groupchat'" not in s and not s.startswith(b"<iq"))


def _compare(slow, fast) -> None:
    assert len(fast[0]) == len(slow[0])
    for i, (a, b) in enumerate(zip(slow[0], fast[0])):
        assert b == a, i
    assert _stanzas(fast[1]) == _stanzas(slow[1])
    assert fast[2:] == slow[2:]


@pytest_twisted.inlineCallbacks
def test_random_and_hostile_lines_give_what_the_general_parser_gives():
    rng = random.Random(1213)
    lines = [_line(rng) if rng.random() < 0.6 else _usual_line(rng) for _ in range(4000)]
    # Last, in one read: a line on which the connection is closed, then what must stay unread.
    reads = _reads(rng, lines) + [b":bob!b@h PRIVMSG #bench :bye-now\r\n:bob!b@h PRIVMSG #bench :never read\r\n:bob!"]
    slow = yield _run(reads, fast=False, caps=set())
    fast = yield _run(reads, fast=True, caps=set())
    # The corpus says something: many room lines, some CTCP answered, some lines bad or overlong.
    assert len(slow[0]) > 1000 and slow[1].count(b"<message") > 1000 and slow[4] > 10 and slow[3] > 10
    assert b"NOTICE" in slow[2] and b"never read" in slow[5]
    _compare(slow, fast)


@pytest_twisted.inlineCallbacks
def test_with_echo_message_and_tags_acknowledged_too():
    """With echo-message our own lines come back (on_echo, not shown): the short path leaves them alone."""
    rng = random.Random(3121)
    lines = [_line(rng) if rng.random() < 0.6 else _usual_line(rng) for _ in range(2000)]
    reads = _reads(rng, lines)
    caps = {"echo-message", "message-tags", "server-time"}
    slow = yield _run(reads, fast=False, caps=caps)
    fast = yield _run(reads, fast=True, caps=caps)
    assert len(slow[0]) > 300
    _compare(slow, fast)


@pytest_twisted.inlineCallbacks
def test_the_usual_lines_take_the_short_path():
    """The benchmark's line, with and without tags, and a notice: none of them reaches the general parser."""
    reads = [b":bob!~b@peer.example PRIVMSG #bench :hello there\r\n",
             b"@msgid=abc;time=2020-05-06T07:08:09.123Z :carol!c@h PRIVMSG #bench :with tags\r\n",
             b":Dave!d@h NOTICE #bench :a notice\n"]
    general = []
    original = client.parse_line
    client.parse_line = lambda line: (general.append(line), original(line))[1]
    try:
        result = yield _run(reads, fast=True, caps=set())
    finally:
        client.parse_line = original
    said = ("hello there", "with tags", "a notice")
    assert general and not [line for line in general if any(t in str(line) for t in said)]
    assert len(result[0]) == 3
    assert b">hello there</body>" in result[1] and b"[notice] a notice" in result[1]
    assert b"<delay" in result[1] and b"id='abc'" in result[1]
