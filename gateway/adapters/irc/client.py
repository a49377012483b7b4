"""
One IRC connection, on Twisted's IRCClient, with what it lacks: IRCv3 CAP
negotiation with SASL PLAIN, server-time and message tags; a fallback charset for
non-UTF-8 servers; and an outgoing token bucket instead of a fixed line delay.
Events go to the session that owns the connection.

Tags come from a server we do not control: they are checked here, where they
enter, so that only a sane timestamp and an id fit for an XML attribute ever
reach the neutral model. So is everything else the server can make us hold:
a line longer than IRCv3 allows is skipped (up to its newline) without being
buffered, the capabilities and ISUPPORT tokens it offers are counted, and a
registration that has not finished by the deadline ends the connection; the
MOTD, which nothing shows, is not kept at all.
"""

from __future__ import annotations

import base64
import calendar
import math
import re
import time
from collections import deque
from typing import Callable

from twisted.internet import defer, interfaces
from twisted.logger import Logger
from twisted.words.protocols import irc
from zope.interface import implementer

from gateway import __version__
from gateway.adapters.irc import text
from gateway.model import PermanentFailure, TemporaryFailure

log = Logger(namespace="gateway.adapters.irc")

#: userhost-in-names: NAMES brings every occupant's user and host (their real JIDs) with no WHO.
#: echo-message: the server sends our own lines back with their msgid, so replies and reactions
#: from IRC to the user's lines can be linked to them (the echoes are not shown again).
WANTED_CAPS = ("server-time", "message-tags", "multi-prefix", "userhost-in-names", "echo-message")

#: The longest line read: IRCv3's 8,191 bytes of tags plus the 512 of the line.
#: A longer one is skipped up to its newline, not buffered (the connection and
#: its rooms live on: one bad line must not cost the user the network).
MAX_LINE = 8191 + 512
#: Capability names kept from CAP LS, and ISUPPORT (005) lines taken: real
#: servers send a few dozen; a server sending more only wants our memory.
MAX_OFFERED_CAPS = 200
MAX_ISUPPORT_LINES = 30
#: CTCP queries answered per window (seconds); the rest are ignored.
CTCP_ANSWERS = 5
CTCP_WINDOW = 10.0

#: Seconds we listen before sending CAP LS, NICK and USER, unless the server
#: speaks first. A server refusing us at accept (connection limits, K-lines)
#: writes ERROR and closes at once; had our lines arrived before its close, its
#: kernel answers with a reset and discards that ERROR, and the user would learn
#: only "connection reset" instead of the server's reason.
GREETING_WAIT = 0.3

#: Lines one connection may hold behind its throttle: at the default 2 lines/s,
#: about 17 minutes of talk. Beyond it the outbox keeps the messages instead.
MAX_PENDING_LINES = 2000

_TAG_ESCAPE = re.compile(r"\\(.?)", re.DOTALL)
_TAG_ESCAPES = {":": ";", "s": " ", "r": "\r", "n": "\n", "": ""}
_STAMP = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z", re.ASCII)
#: 1990-01-01T00:00:00Z: IRCv3 is far younger; an older stamp is a broken server clock.
_OLDEST = 631152000.0
_NEWEST_AHEAD = 86400.0
#: Printable ASCII without space, quotes, angle brackets or ampersand: safe in an
#: XML attribute and in a JID resource, whatever the serialiser does.
_MSGID = re.compile(r"[!#-%(-;=?-~]{1,128}", re.ASCII)

#: Parsed ISUPPORT tables by the tokens they were parsed from, shared by every
#: connection that was sent the same tokens (all the users of one server): one
#: copy per server instead of one per connection. Bounded in entries and in
#: size: tokens longer than MAX_SHARED_TOKENS characters in all (real servers
#: send about 500) are parsed for their connection alone, as before; a server
#: sending each connection other tokens only pushes the oldest tables out.
_SUPPORTED: dict[tuple[str, ...], tuple[tuple[str, ...], irc.ServerSupportedFeatures]] = {}
MAX_SHARED_ISUPPORT = 64
MAX_SHARED_TOKENS = 4096


def shared_features(tokens: tuple[str, ...], previous: irc.ServerSupportedFeatures | None = None,
                    new: list[str] | None = None) -> tuple[tuple[str, ...], irc.ServerSupportedFeatures]:
    """
    (the cache's own copy of ``tokens``, the table parsed from them): the same
    two objects for every connection given the same tokens. A table is never
    changed once made: a later 005 line makes another, from ``previous`` (the
    table of the tokens before) and only the ``new`` tokens of that line.
    """
    found = _SUPPORTED.get(tokens)
    if found is not None:
        return found
    features = irc.ServerSupportedFeatures()
    if previous is not None and new is not None:
        # ServerSupportedFeatures.parse replaces or pops entries, never changes a value: a copy of the
        # dict is a table of its own.
        features._features = dict(previous._features)
        features.parse(new)
    else:
        features.parse(list(tokens))
    if sum(len(t) for t in tokens) <= MAX_SHARED_TOKENS:
        while len(_SUPPORTED) >= MAX_SHARED_ISUPPORT:
            del _SUPPORTED[next(iter(_SUPPORTED))]
        _SUPPORTED[tokens] = (tokens, features)
    return tokens, features


#: The usual line: a channel PRIVMSG or NOTICE from a user, with or without IRCv3 tags, spaced as
#: servers space it, whose nick and text are already what text.clean_name and text.clean would
#: leave (printable ASCII nick without ``!`` or ``@``, no control, C1 or noncharacter in the
#: text, which is not CTCP and short enough that no cut applies, even after a notice's mark).
#: Only such a line takes the short path (IRCConnection.lineReceived to Session.on_room_line);
#: anything else, or anything odd, goes through parse_line and Twisted's dispatch. Both give the
#: same room events: tests/unit/test_irc_in_fast.py.
_ROOM_LINE = re.compile(
    r"(?:@([^ ]+) )?:([\x22-\x3f\x41-\x7e]{1,%d})![^ ]* (PRIVMSG|NOTICE) ([#&+!][^ ]*) "
    r":([^\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]{1,%d})"
    % (text.NAME_LIMIT, text.TEXT_LIMIT - len(text.NOTICE_MARK)))


def parse_tags(raw: str) -> dict[str, str]:
    """IRCv3 message tags, each value unescaped in one pass (``\\\\s`` is a backslash then ``s``)."""
    tags = {}
    for item in raw.split(";"):
        key, _, value = item.partition("=")
        tags[key] = _TAG_ESCAPE.sub(lambda m: _TAG_ESCAPES.get(m.group(1), m.group(1)), value)
    return tags


def parse_line(line: str) -> tuple[dict[str, str], str, str, list[str]] | None:
    """
    (tags, prefix, command, params) of one decoded line, or None when it holds no
    command. Parameters are separated by spaces only (RFC 1459), not by any
    Unicode whitespace, so a NEL or NBSP inside a nick does not split it in two.
    """
    tags: dict[str, str] = {}
    if line.startswith("@"):
        raw, _, line = line[1:].partition(" ")
        tags = parse_tags(raw)
    line = line.lstrip(" ")
    prefix = ""
    if line.startswith(":"):
        prefix, _, line = line[1:].partition(" ")
        line = line.lstrip(" ")
    if not line or line.startswith(":"):
        return None                                   # no command, at most a trailing parameter
    head, sep, trailing = line.partition(" :")
    params = [p for p in head.split(" ") if p]
    command = params.pop(0).upper()
    if sep:
        params.append(trailing)
    return tags, prefix, irc.numeric_to_symbolic.get(command, command), params


def server_time(tags: dict[str, str], now: float | None = None) -> float | None:
    """
    The ``time`` tag as seconds since the epoch, or None when it is not a plain
    UTC stamp (``YYYY-MM-DDThh:mm:ss[.fff]Z``), not a real date, before 1990 or
    more than a day ahead of ``now``: a bad stamp costs the delay mark, never
    the message.
    """
    m = _STAMP.fullmatch(tags.get("time") or "")
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not (1990 <= year and 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]
            and hour < 24 and minute < 60 and second < 60):
        return None
    fraction = m.group(7) or "0"
    stamp = calendar.timegm((year, month, day, hour, minute, second)) + int(fraction) / 10 ** len(fraction)
    now = time.time() if now is None else now
    if not math.isfinite(stamp) or not _OLDEST <= stamp <= now + _NEWEST_AHEAD:
        return None
    return stamp


def safe_msgid(tags: dict[str, str], name: str = "msgid") -> str | None:
    """The ``msgid`` tag (or another naming a message, ``+draft/reply``) if it can safely become a
    stanza id (bounded, printable, nothing XML-special)."""
    value = tags.get(name)
    return value if value and _MSGID.fullmatch(value) else None


_TAG_VALUE_ESCAPES = {"\\": "\\\\", ";": "\\:", " ": "\\s", "\r": "\\r", "\n": "\\n"}


def encode_tags(tags: dict[str, str]) -> str:
    """Client tags as they go on the wire (IRCv3 message-tags escaping), without the leading ``@``."""
    return ";".join(f"{key}={''.join(_TAG_VALUE_ESCAPES.get(c, c) for c in value)}" if value else key
                    for key, value in tags.items())


class QueueFull(TemporaryFailure):
    """
    The connection already holds as many lines as it may: the outbox keeps a
    private message for later; a room message (not queued: room traffic is
    about now) is refused to its sender with this wait error.
    """

    condition = "resource-constraint"


class Outgoing:
    """
    One message's lines on their way through a connection's throttle. ``done``
    fires with the number of lines once the last one is written to the socket,
    or fails with TemporaryFailure if the connection goes first; ``written``
    then says how far it got, so the message can resume there and not repeat.
    """

    def __init__(self, lines: list[str], on_progress: Callable[["Outgoing"], None] | None = None):
        self.lines = lines
        self.written = 0
        self.done: defer.Deferred = defer.Deferred()
        self.on_progress = on_progress

    @property
    def finished(self) -> bool:
        return self.done.called

    def abandon(self, error: Exception) -> None:
        """Stop: lines not written yet stay unwritten (the connection skips them)."""
        if not self.done.called:
            self.done.errback(error)


@implementer(interfaces.IPushProducer, interfaces.IHandshakeListener)
class IRCConnection(irc.IRCClient):
    # A gateway holds one of these per user and server: our own state in slots
    # (Twisted's IRCClient and Protocol attributes stay in the instance dict),
    # which keeps that dict small enough for the interpreter to share its keys.
    __slots__ = ("session", "sasl", "fallback", "tags", "_caps_done", "_rate", "_burst", "_clock", "_tokens", "_last",
                 "_pending", "_drain", "_lost", "_inbuf", "_skipping", "overlong", "bad_lines", "_offered",
                 "_isupport_lines", "_isupport", "_deadline", "_hello", "_ctcp_window", "greeted", "signed_on_at",
                 "_ident_ends", "_beat", "_wheel")

    versionName = "xmpp-gateway"
    versionNum = __version__
    sourceURL = "https://pypi.org/project/xmpp-gateway/"

    def __init__(self, session):
        self.session = session
        s = session.settings
        self.nickname = s["nick"]
        self.username = s["username"]
        self.realname = s["realname"]
        self.password = s.get("password") or None
        self.sasl = (s.get("sasl_username"), s.get("sasl_password")) if s.get("sasl_password") else None
        self.fallback = session.adapter.config["fallback_encoding"]
        self.tags: dict[str, str] = {}
        #: Capabilities the server acknowledged (message-tags: client tags such as +typing may be sent).
        self.caps: set[str] = set()
        self._caps_done = False
        rate, burst = session.adapter.config["throttle_rate"], session.adapter.config["throttle_burst"]
        self._rate, self._burst = rate, float(burst)
        self._clock = session.adapter.context.clock
        self._tokens, self._last = float(burst), self._clock.seconds()
        #: Lines waiting for the bucket, each with the message it belongs to (None for commands);
        #: None while nothing waits (an empty deque alone is 600 bytes, per connection).
        self._pending: deque[tuple[str, Outgoing | None]] | None = None
        self._drain = None
        self._lost = False
        self._inbuf = b""
        self._skipping = False
        #: Lines skipped for being longer than MAX_LINE (logged when the connection ends).
        self.overlong = 0
        self.bad_lines = 0
        #: Capabilities offered so far by a CAP LS in several lines (None before and after).
        self._offered: set[str] | None = None
        self._isupport_lines = 0
        #: The ISUPPORT tokens received so far (the shared table's key: see shared_features).
        self._isupport: tuple[str, ...] = ()
        self._deadline = None
        self._hello = None
        self._ctcp_window = [0.0, 0]
        #: The welcome burst is over (end of MOTD): replies from now on answer commands.
        self.greeted = False
        self.signed_on_at: float | None = None
        #: (our address, the server's) while listed with the adapter's identd.
        self._ident_ends = None
        #: The adapter's keepalive wheel while in it, and the bucket there (heartbeat.py).
        self._wheel = None
        self._beat: int | None = None

    # -- registration with CAP ---------------------------------------------------

    def connectionMade(self):
        if not interfaces.ISSLTransport.providedBy(self.transport):
            self.transport.registerProducer(self, True)
        self.supported = shared_features(())[1]
        # No self._queue: Twisted queues lines there only with a lineRate, and ours is None (the token bucket).
        timeout = self.session.adapter.config["registration_timeout"]
        self._deadline = self._clock.callLater(timeout, self._registration_expired, timeout)
        self._hello = self._clock.callLater(GREETING_WAIT, self._sign_on)
        table = getattr(self.session.adapter, "ident_table", None)
        if table is not None:
            # Now, not at the welcome: the server asks our identd as soon as it accepts.
            self._ident_ends = (self.transport.getHost(), self.transport.getPeer())
            table.add(self, *self._ident_ends, self.username)

    def _sign_on(self) -> None:
        """CAP LS, then NICK and USER: after GREETING_WAIT, or as soon as the server says anything."""
        if self._hello is not None and self._hello.active():
            self._hello.cancel()
        self._hello = None
        webirc = self.session.settings.get("webirc")
        if webirc:
            # First of all (IRCv3 webirc): before CAP, PASS, NICK and USER. It carries the operator's
            # password: it is written here and nowhere else, never logged.
            self.sendLine(webirc)
        self.sendLine("CAP LS 302")
        self.register(self.nickname)

    def handshakeCompleted(self) -> None:
        # Over TLS only now: paused during the handshake, we would stop reading
        # the very bytes that complete it.
        self.transport.registerProducer(self, True)

    # We are our own producer: when what we owe the server (PONGs, CTCP answers,
    # messages) fills the send buffer because it does not read, we stop reading
    # it, so a flood of requests cannot grow our memory.

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass

    def _registration_expired(self, timeout: float) -> None:
        """CAP, SASL or the welcome never came: a server holding us in registration holds the user's joins."""
        self._deadline = None
        self.session.registration_timed_out(self, timeout)
        # Abort, not close: a connection the server never accepted (a full
        # backlog) would wait for acknowledgements that never come.
        self.transport.abortConnection()

    def _offer(self, names: set[str]) -> None:
        if self._offered is None:
            self._offered = set()
        room = MAX_OFFERED_CAPS - len(self._offered)
        if room > 0:
            self._offered.update(list(names)[:room])

    def irc_CAP(self, prefix, params):
        sub = params[1].upper() if len(params) > 1 else ""
        if sub == "LS" and not self._caps_done:
            offered = {c.split("=", 1)[0] for c in params[-1].split(" ") if c}
            if len(params) > 3 and params[2] == "*":
                self._offer(offered)
                return
            offered |= self._offered or set()
            self._offered = None
            want = [c for c in WANTED_CAPS if c in offered]
            if self.sasl and "sasl" in offered:
                want.append("sasl")
            if want:
                self.sendLine("CAP REQ :" + " ".join(want))
            else:
                self._cap_end()
        elif sub == "ACK":
            self.caps |= {c for c in params[-1].split(" ")[:MAX_OFFERED_CAPS] if c in WANTED_CAPS}
            if "sasl" in params[-1].split() and self.sasl:
                self.sendLine("AUTHENTICATE PLAIN")
            else:
                self._cap_end()
        elif sub == "NAK":
            self._cap_end()

    def irc_AUTHENTICATE(self, prefix, params):
        if params and params[0] == "+":
            user, password = self.sasl
            token = base64.b64encode(f"{user}\0{user}\0{password}".encode()).decode()
            for i in range(0, len(token), 400):
                self.sendLine("AUTHENTICATE " + token[i:i + 400])
            if len(token) % 400 == 0:
                self.sendLine("AUTHENTICATE +")

    def irc_903(self, prefix, params):          # RPL_SASLSUCCESS
        self.session.sasl_result(True, params[-1])
        self._cap_end()

    def _sasl_failed(self, prefix, params):
        self.session.sasl_result(False, params[-1])
        self._cap_end()

    irc_902 = irc_904 = irc_905 = irc_906 = irc_908 = _sasl_failed

    def _cap_end(self):
        if not self._caps_done:
            self._caps_done = True
            self.sendLine("CAP END")

    def irc_unknown(self, prefix, command, params):
        if command == "CAP":
            self.irc_CAP(prefix, params)

    def irc_ERROR(self, prefix, params):
        """The server's last word before it closes (``Closing Link: ... (Connection limit reached)``)."""
        self.session.server_error(params[-1] if params else "")

    def irc_RPL_ISUPPORT(self, prefix, params):
        """Twisted's, but the parsed table is shared with the other connections sent the same tokens."""
        self._isupport_lines += 1
        if self._isupport_lines <= MAX_ISUPPORT_LINES:
            args = params[1:-1]
            self._isupport, self.supported = shared_features(self._isupport + tuple(args), self.supported, args)
            self.isupport(args)

    # The MOTD is never shown to anyone, so none of it is kept: Twisted's
    # IRCClient appends every 372 line to self.motd until 376, and a server that
    # never sends 376 (after the welcome, when the registration deadline no
    # longer applies) would grow that list for as long as the connection lasts.

    def irc_RPL_MOTDSTART(self, prefix, params):
        self.motd = None

    def irc_RPL_MOTD(self, prefix, params):
        pass

    def irc_RPL_ENDOFMOTD(self, prefix, params):
        self.motd = None
        self.greeted = True
        self.session.greeting_over()

    def irc_ERR_NOMOTD(self, prefix, params):
        self.greeted = True
        self.session.greeting_over()

    # -- incoming lines ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        Lines split on LF (CR dropped, as Twisted's IRCClient does), never holding
        more than MAX_LINE bytes of a line: the rest of an overlong one is
        discarded as it arrives, up to its newline. The read is split once.
        """
        if self._skipping:
            cut = data.find(b"\n")
            if cut < 0:
                return
            self._skipping = False
            data = data[cut + 1:]
        lines = (self._inbuf + data if self._inbuf else data).split(b"\n")
        rest = lines.pop()
        done = 0
        for line in lines:
            if self._lost or getattr(self.transport, "disconnecting", False):
                rest = b"\n".join(lines[done:] + [rest])     # kept unread, as the line-by-line walk left it
                break
            done += 1
            if len(line) > MAX_LINE:
                self.overlong += 1
                continue
            self.lineReceived(line.replace(b"\r", b"") if b"\r" in line else line)
        if len(rest) > MAX_LINE:
            self.overlong += 1
            self._skipping, rest = True, b""
        self._inbuf = rest

    def lineReceived(self, line):
        """
        The usual line (_ROOM_LINE) goes to the session without the general parser
        and Twisted's dispatch; every other one through parse_line and handleCommand.
        """
        if self._hello is not None:
            self._sign_on()                            # the server spoke first: no need to wait
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError:
                line = self._decode(line)
        found = _ROOM_LINE.fullmatch(line)
        if found is not None:
            raw_tags, nick, command, target, body = found.groups()
            if "echo-message" not in self.caps or nick.lower() != (self.nickname or "").lower():
                self.tags = tags = parse_tags(raw_tags) if raw_tags else {}
                try:
                    self.session.on_room_line(nick, target, body, tags, command == "NOTICE")
                except Exception as e:
                    self._not_understood(command, e)
                return
            # Our own line back (echo-message): on_echo, by the general path.
        parsed = parse_line(line)
        if parsed is None:
            return
        self.tags, prefix, command, params = parsed
        self.handleCommand(command, prefix, params)

    def _decode(self, raw: bytes) -> str:
        """UTF-8, else the channel's own encoding (the user's setting), else the operator's fallback."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
        channels = self.session.settings.get("channels")
        if channels:
            parsed = parse_line(raw.decode("latin-1"))       # only to find the channel the line is about
            if parsed is not None and parsed[3]:
                encoding = (channels.get(parsed[3][0].lower()) or {}).get("encoding")
                if encoding:
                    return raw.decode(encoding, "replace")
        return raw.decode(self.fallback, "replace")

    def handleCommand(self, command, prefix, params):
        """Twisted's, but a handler failing on a malformed line costs that line and one log entry, no traceback flood."""
        method = getattr(self, f"irc_{command}", None)
        try:
            numeric = irc.symbolic_to_numeric.get(command, command)
            if numeric.isdigit():
                self.session.server_reply(numeric, params)     # shown to the user only after a raw command
            if method is not None:
                method(prefix, params)
            else:
                self.irc_unknown(prefix, command, params)
        except Exception as e:
            self._not_understood(command, e)

    def _not_understood(self, command: str, error: Exception) -> None:
        self.bad_lines += 1
        if self.bad_lines <= 3:
            log.warn("{server}: line not understood ({command}: {error!r})", server=self.session.server,
                     command=text.clean(command, 32), error=error)

    def ctcpQuery(self, user, channel, messages):
        """
        ACTION, and answers to VERSION, PING and TIME, at most CTCP_ANSWERS per
        CTCP_WINDOW seconds: a flood of queries cannot make us flood back (or
        fill our send buffer towards a server that does not read). Other
        queries (DCC, CLIENTINFO, FINGER...) are ignored.
        """
        for tag, data in messages:
            if tag == "ACTION":
                if data is not None:
                    self.action(user, channel, data)
            elif tag in ("VERSION", "PING", "TIME"):
                now = self._clock.seconds()
                if now - self._ctcp_window[0] > CTCP_WINDOW:
                    self._ctcp_window = [now, 0]
                self._ctcp_window[1] += 1
                if self._ctcp_window[1] <= CTCP_ANSWERS:
                    getattr(self, f"ctcpQuery_{tag}")(user, channel, data)

    def startHeartbeat(self) -> None:
        """
        PING every ``heartbeatInterval`` seconds, from the adapter's one wheel
        instead of Twisted's LoopingCall per connection (650 bytes each).
        """
        self.stopHeartbeat()
        if self.heartbeatInterval is None:
            return
        self._wheel = self.session.adapter.heartbeat_wheel(self.heartbeatInterval)
        self._wheel.add(self)

    def stopHeartbeat(self) -> None:
        """Out of the wheel (at the end of the connection, from IRCClient.connectionLost)."""
        wheel, self._wheel = self._wheel, None
        if wheel is not None:
            wheel.remove(self)

    def signedOn(self):
        self.signed_on_at = self._clock.seconds()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self.session.signed_on(self)

    def irc_ERR_NICKNAMEINUSE(self, prefix, params):
        self.session.nick_in_use(self, params[1] if len(params) > 1 else self.nickname)

    def alterCollidedNick(self, nickname):
        return nickname + "_"

    def nickChanged(self, nick):
        super().nickChanged(nick)
        self.session.own_nick_changed(nick)

    def irc_JOIN(self, prefix, params):
        """Twisted's, keeping the joiner's user and host (shown in their real JID)."""
        if not params:
            return
        nick, found = text.split_prefix(prefix)
        if nick == self.nickname:
            self.session.on_self_joined(params[0], found)
        else:
            self.session.on_join(nick, params[0], found)

    def irc_RPL_WHOREPLY(self, prefix, params):
        # me, channel, user, host, server, nick, flags, "hops realname"
        if len(params) >= 6:
            self.session.on_who_reply(params[1], params[2], params[3], params[5])

    def irc_RPL_ENDOFWHO(self, prefix, params):
        if len(params) >= 2:
            self.session.on_end_of_who(params[1])

    def irc_PONG(self, prefix, params):
        """The answer to a PING: the ones after a moderation change carry its token."""
        if params:
            self.session.on_pong(params[-1])

    def irc_INVITE(self, prefix, params):
        if len(params) >= 2 and params[0] == self.nickname:
            self.session.on_invite(prefix.split("!", 1)[0], params[1])

    def irc_MODE(self, user, params):
        """Every channel mode change is shown as a notice of the room; the occupants' ones change roles too."""
        if len(params) >= 2 and params[0].startswith(("#", "&", "+", "!")):
            self.session.on_mode_line(params[0], user.split("!", 1)[0], " ".join(params[1:]))
        super().irc_MODE(user, params)

    def irc_RPL_NAMREPLY(self, prefix, params):
        if len(params) >= 4:
            self.session.on_names(params[2], [n for n in params[3].split(" ") if n])

    def irc_RPL_ENDOFNAMES(self, prefix, params):
        if len(params) >= 2:
            self.session.on_end_of_names(params[1])

    def topicUpdated(self, user, channel, newTopic):
        self.session.on_topic(user.split("!", 1)[0], channel, newTopic)

    def irc_RPL_NOTOPIC(self, prefix, params):
        self.session.on_topic("", params[1], "")

    def userLeft(self, user, channel):
        self.session.on_part(user.split("!", 1)[0], channel, None)

    def irc_PART(self, prefix, params):
        nick = prefix.split("!", 1)[0]
        reason = params[1] if len(params) > 1 else None
        if nick == self.nickname:
            self.session.on_self_part(params[0])
        else:
            self.session.on_part(nick, params[0], reason)

    def userQuit(self, user, quitMessage):
        self.session.on_quit(user.split("!", 1)[0], quitMessage)

    def userKicked(self, kickee, channel, kicker, message):
        self.session.on_kick(kickee, channel, kicker.split("!", 1)[0], message)

    def kickedFrom(self, channel, kicker, message):
        self.session.on_kick(self.nickname, channel, kicker.split("!", 1)[0], message)

    def userRenamed(self, oldname, newname):
        self.session.on_nick(oldname, newname)

    def modeChanged(self, user, channel, set, modes, args):
        for mode, arg in zip(modes, args):
            if arg and channel.startswith(("#", "&", "+", "!")):
                self.session.on_mode(channel, arg, mode, set)

    def privmsg(self, user, channel, message):
        self.session.on_message(user.split("!", 1)[0], channel, message, self.tags)

    def _echo(self, prefix: str) -> bool:
        return "echo-message" in self.caps and prefix.split("!", 1)[0].lower() == (self.nickname or "").lower()

    def irc_PRIVMSG(self, prefix, params):
        if params and self._echo(prefix):
            self.session.on_echo(params[0], params[-1], self.tags)      # our own line, back with its msgid
            return
        super().irc_PRIVMSG(prefix, params)

    def irc_NOTICE(self, prefix, params):
        if params and self._echo(prefix):
            return
        super().irc_NOTICE(prefix, params)

    def irc_TAGMSG(self, prefix, params):
        """IRCv3 message-tags: a message of tags only (+typing, +draft/react)."""
        if params and "!" in prefix and not self._echo(prefix):
            self.session.on_tagmsg(prefix.split("!", 1)[0], params[0], self.tags)

    def action(self, user, channel, data):
        self.session.on_message(user.split("!", 1)[0], channel, "/me " + data, self.tags)

    def noticed(self, user, channel, message):
        if "!" in (user or ""):
            self.session.on_message(user.split("!", 1)[0], channel, message, self.tags, notice=True)
        elif self.session.conn is self and not channel.startswith(("#", "&", "+", "!")):
            self.session.server_notice(message)        # the server's own, once signed on (not its greeting)

    def irc_RPL_LIST(self, prefix, params):
        if len(params) < 2:
            return
        users = int(params[2]) if len(params) > 2 and params[2].isdigit() else 0
        self.session.on_list_entry(params[1], users, params[3] if len(params) > 3 else "")

    def irc_RPL_LISTEND(self, prefix, params):
        self.session.on_list_end()

    def irc_ERR_BANNEDFROMCHAN(self, prefix, params):
        self.session.on_join_refused(params[1], "forbidden", params[-1])

    irc_ERR_INVITEONLYCHAN = irc_ERR_CHANNELISFULL = irc_ERR_BADCHANNELKEY = irc_ERR_BANNEDFROMCHAN

    def irc_ERR_NOSUCHNICK(self, prefix, params):
        """401: also the answer to a private message to a nick not there, which the user must hear."""
        if len(params) >= 2:
            self.session.on_no_such_nick(params[1], params[-1] if len(params) > 2 else "")

    def irc_ERR_CANNOTSENDTOCHAN(self, prefix, params):
        """404: the channel did not take our line (+m, +n, a ban): the user must hear it was not sent."""
        if len(params) >= 2:
            self.session.on_cannot_send(params[1], params[-1] if len(params) > 2 else "")

    def irc_ERR_NOSUCHCHANNEL(self, prefix, params):
        self.session.on_join_refused(params[1], "item-not-found", params[-1])

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self._lost = True
        table = getattr(self.session.adapter, "ident_table", None)
        if table is not None and self._ident_ends is not None:
            table.remove(self, *self._ident_ends)
            self._ident_ends = None
        self._inbuf = b""
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self._hello is not None and self._hello.active():
            self._hello.cancel()
        self._hello = None
        if self.overlong:
            self.session.overlong_lines(self.overlong)
        if self._drain is not None and self._drain.active():
            self._drain.cancel()
        self._drain = None
        self.session.connection_lost(self, reason)
        self.abandon(TemporaryFailure(f"connection to {self.session.server} lost before the message was written: "
                                      f"{reason.getErrorMessage()}"))

    def abandon(self, error: Exception) -> None:
        """Drop every waiting line; the messages they belong to fail with ``error``."""
        pending, self._pending = self._pending or (), None
        for out in {id(out): out for _, out in pending if out is not None}.values():
            out.abandon(error)

    # -- outgoing, throttled ---------------------------------------------------------

    def send_lines(self, lines: list[str]) -> None:
        """Queue commands behind the token bucket (bursts of ``burst``, then ``rate`` per second)."""
        self._queued().extend((line, None) for line in lines)
        self._kick()

    def send_message(self, lines: list[str], on_progress: Callable[[Outgoing], None] | None = None) -> Outgoing:
        """
        Queue a message's lines behind the token bucket; its ``done`` tells when
        the last is written. Raises QueueFull rather than hold more than
        MAX_PENDING_LINES: a flood must wait in the durable outbox, not in memory;
        PermanentFailure for a message that alone has more lines than that.
        """
        if self._lost:
            raise TemporaryFailure(f"connection to {self.session.server} lost")
        if len(lines) > MAX_PENDING_LINES:
            # It would never fit: retried, it would only fail at the outbox deadline, an hour on.
            raise PermanentFailure(f"a message of {len(lines)} IRC lines is more than this gateway sends at once "
                                   f"({MAX_PENDING_LINES}); send it in parts", "policy-violation", "modify")
        if len(self._pending or ()) + len(lines) > MAX_PENDING_LINES:
            raise QueueFull(f"IRC send queue full: {MAX_PENDING_LINES} lines already wait to go to "
                            f"{self.session.server} behind the send throttle; try again later")
        out = Outgoing(lines, on_progress)
        self._queued().extend((line, out) for line in lines)
        self._kick()
        return out

    def send_room_lines(self, lines: list[str]) -> None:
        """
        A room message's lines: ``send_message`` with the same bounds (QueueFull,
        PermanentFailure), for a message nobody waits on (room traffic is not in
        the outbox, and a line lost with the connection is lost as before), so
        without an Outgoing and its Deferred: the hot path of room lines.
        """
        if self._lost:
            raise TemporaryFailure(f"connection to {self.session.server} lost")
        if len(lines) > MAX_PENDING_LINES:
            raise PermanentFailure(f"a message of {len(lines)} IRC lines is more than this gateway sends at once "
                                   f"({MAX_PENDING_LINES}); send it in parts", "policy-violation", "modify")
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        elif len(pending) + len(lines) > MAX_PENDING_LINES:
            raise QueueFull(f"IRC send queue full: {MAX_PENDING_LINES} lines already wait to go to "
                            f"{self.session.server} behind the send throttle; try again later")
        if len(lines) == 1:
            pending.append((lines[0], None))
        else:
            pending.extend([(line, None) for line in lines])
        if self._drain is None:                   # _kick: a scheduled drain means the bucket is empty
            self._flush()

    def _queued(self) -> deque[tuple[str, Outgoing | None]]:
        if self._pending is None:
            self._pending = deque()
        return self._pending

    def _kick(self) -> None:
        # A scheduled drain means the bucket is empty: new lines wait their turn behind it.
        if self._drain is None and not self._lost:
            self._flush()

    def _flush(self) -> None:
        self._drain = None
        if getattr(self.transport, "disconnecting", False):
            return                                # closing: whatever still waits fails in connectionLost
        if self._rate > 0:
            now = self._clock.seconds()
            self._tokens = min(self._burst, self._tokens + max(0.0, now - self._last) * self._rate)
            self._last = now
        moved: dict[int, Outgoing] = {}
        while self._pending and (self._rate <= 0 or self._tokens >= 1):
            line, out = self._pending.popleft()
            if out is not None:
                if out.finished:                  # abandoned (taken over elsewhere): the rest stays unsent
                    continue
                out.written += 1
                moved[id(out)] = out
            if "\x10" in line or "\x00" in line or "\n" in line or "\r" in line or self.lineRate is not None:
                self.sendLine(line)               # Twisted's low-level quoting (and queue, with a lineRate)
            else:
                self.transport.write(line.encode("utf-8") + b"\r\n")    # what sendLine writes for it
            if self._rate > 0:
                self._tokens -= 1
        if self._pending:
            self._drain = self._clock.callLater((1 - self._tokens) / self._rate, self._flush)
        else:
            self._pending = None
        # Callbacks last, once the queue is consistent: they may queue more lines.
        for out in moved.values():
            if out.written == len(out.lines):
                out.done.callback(out.written)
            elif out.on_progress is not None:
                out.on_progress(out)
