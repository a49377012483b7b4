"""
Raw IRC commands, as biboumi has them: a message to a server's JID is sent to
the server as commands, one per line, and what the server answers comes back
from that JID as chat messages.

What comes back is the server's, so it is bounded: replies (numerics) are
forwarded only for RAW_REPLY_WINDOW seconds after a command and at most
RAW_REPLY_LINES of them; server notices at most NOTICES_PER_MINUTE. Lines that
arrive together are sent as one message (a WHOIS is one message, not six).
"""

from __future__ import annotations

from twisted.logger import Logger

from gateway.adapters.irc import text
from gateway.model import InboundMessage, PermanentFailure

log = Logger(namespace="gateway.adapters.irc.raw")

MAX_COMMANDS = 8            # lines of one message
MAX_COMMAND_BYTES = 510     # RFC 1459's line less CR LF
RAW_REPLY_WINDOW = 10.0
RAW_REPLY_LINES = 100
NOTICES_PER_MINUTE = 10
COALESCE = 0.2


def commands(body: str) -> list[str]:
    """The IRC lines a message to a server stands for; PermanentFailure (modify) for ones we would not send."""
    lines = [text.one_line(line) for line in (body or "").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise PermanentFailure("write an IRC command, e.g. WHOIS nick", "bad-request", "modify")
    if len(lines) > MAX_COMMANDS:
        raise PermanentFailure(f"at most {MAX_COMMANDS} commands in one message", "policy-violation", "modify")
    for line in lines:
        if len(line.encode("utf-8")) > MAX_COMMAND_BYTES:
            raise PermanentFailure(f"an IRC command is at most {MAX_COMMAND_BYTES} bytes", "policy-violation",
                                   "modify")
    return lines


class ServerReplies:
    """What one session's server says back to its user, between the bounds above."""

    __slots__ = ("session", "_until", "_left", "_armed", "_notices", "_pending", "_flush")

    def __init__(self, session):
        self.session = session
        self._until = 0.0
        self._left = 0
        #: A command went out on a connection still in its welcome burst: replies count from its end.
        self._armed = False
        self._notices = [0.0, 0]
        self._pending: list[str] = []
        self._flush = None

    def command_sent(self) -> None:
        if self.session.greeted:
            self._open()
        else:
            self._armed = True

    def greeting_over(self) -> None:
        if self._armed:
            self._armed = False
            self._open()

    def _open(self) -> None:
        self._until = self.session.context.clock.seconds() + RAW_REPLY_WINDOW
        self._left = RAW_REPLY_LINES

    def reply(self, command: str, params: list[str]) -> None:
        """A numeric: forwarded while a command's window is open."""
        if self._left <= 0 or self.session.context.clock.seconds() > self._until:
            return
        self._left -= 1
        self._add(" ".join([command, *params[1:]]))

    def notice(self, body: str) -> None:
        now = self.session.context.clock.seconds()
        if now - self._notices[0] > 60.0:
            self._notices = [now, 0]
        self._notices[1] += 1
        if self._notices[1] <= NOTICES_PER_MINUTE:
            self._add(f"[notice] {body}")

    def _add(self, line: str) -> None:
        self._pending.append(text.clean(line))
        if self._flush is None:
            self._flush = self.session.context.clock.callLater(COALESCE, self._send)

    def _send(self) -> None:
        self._flush = None
        lines, self._pending = self._pending, []
        session = self.session
        session.context.deliver(InboundMessage(component=session.context.component, user=session.user,
                                               sender=session.server, body="\n".join(lines))).addErrback(
            lambda f: log.failure("reply of {server} not stored", f, server=session.server))
