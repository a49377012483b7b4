"""
The IRC side of IModeration: what a role or affiliation change asked for from
XMPP becomes on IRC (KICK, MODE +o/-o/+v/-v, +b/-b ``nick!*@*``, INVITE), and
how the server's verdict is awaited.

IRC has no acknowledgement for these commands: a change that works is echoed
(``:me!u@h KICK #chan bob :why``, ``:me!u@h MODE #chan +o bob``), one that does
not gets an error numeric (482 not an operator, 401/441 no such nick...), and
one that changes nothing (+v on someone voiced, a ban already set) gets
nothing at all. So every change is followed by ``PING :<token>``: servers
answer in order, so by the PONG everything the server had to say about the
change has come. An error seen before it fails the change; a KICK not echoed by
then fails too (the occupant was not removed); otherwise the change is done.
No PONG within ``timeout`` seconds is remote-server-timeout.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from twisted.internet import defer

from gateway.adapters.irc import text
from gateway.model import GatewayError

#: Error numerics that answer a moderation command, and the stanza error condition each means.
CONDITIONS = {
    "482": "forbidden",             # ERR_CHANOPRIVSNEEDED: the user is no channel operator
    "481": "forbidden",             # ERR_NOPRIVILEGES
    "484": "not-allowed",           # ERR_RESTRICTED / ngircd's "cannot kick a service"
    "401": "item-not-found",        # ERR_NOSUCHNICK
    "441": "item-not-found",        # ERR_USERNOTINCHANNEL
    "403": "item-not-found",        # ERR_NOSUCHCHANNEL
    "442": "not-acceptable",        # ERR_NOTONCHANNEL: the user is not in the channel (any more)
    "443": "conflict",              # ERR_USERONCHANNEL: the invited person is in already
    "472": "feature-not-implemented",   # ERR_UNKNOWNMODE
    "478": "resource-constraint",   # ERR_BANLISTFULL
}
#: Which parameter (after our nick) of each numeric names the channel, and which the nick.
_CHANNEL_AT = {"482": 1, "442": 1, "403": 1, "478": 1, "441": 2, "443": 2}
_NICK_AT = {"401": 1, "441": 1, "443": 1, "484": 1}

#: Seconds the server has to answer a change before it fails with remote-server-timeout.
TIMEOUT = 20.0
#: Changes awaiting a verdict on one connection at most: each is a few lines, but
#: a user (or a client bug) must not make a connection hold thousands.
MAX_PENDING = 50
#: Longest reason sent with a KICK (servers cut at KICKLEN, often 255-400).
MAX_REASON = 300


def ban_mask(nick: str) -> str:
    """The mask that bans a nick wherever it connects from (biboumi's, too)."""
    return f"{nick}!*@*"


def _reason(reason: str | None) -> str:
    return text.one_line(reason or "")[:MAX_REASON].strip()


def kick_line(channel: str, nick: str, reason: str | None) -> str:
    reason = _reason(reason)
    return f"KICK {channel} {nick} :{reason}" if reason else f"KICK {channel} {nick}"


def role_commands(channel: str, nick: str, role: str, modes: set[str], reason: str | None) -> list[str]:
    """
    The IRC lines that give occupant ``nick`` (with channel ``modes`` prefixes,
    e.g. {"@"}) the XEP-0045 ``role``: none → KICK; visitor → -v (and -o/-h, a
    moderator made visitor loses those too); participant → -o/-h and +v;
    moderator → +o. Only what changes is sent: nothing when the occupant has the
    role already. Raises GatewayError for a role IRC has no way to give.
    """
    if role == "none":
        return [kick_line(channel, nick, reason)]
    take = [m for m, p in (("o", "@"), ("h", "%")) if p in modes]
    if role == "visitor":
        take += ["v"] if "+" in modes else []
        return [f"MODE {channel} -{''.join(take)} {' '.join([nick] * len(take))}"] if take else []
    if role == "participant":
        lines = [f"MODE {channel} -{''.join(take)} {' '.join([nick] * len(take))}"] if take else []
        if "+" not in modes:
            lines.append(f"MODE {channel} +v {nick}")
        return lines
    if role == "moderator":
        return [] if modes & {"@", "&", "~"} else [f"MODE {channel} +o {nick}"]
    raise GatewayError(f"no such role: {role!r}", "bad-request", "modify")


def affiliation_commands(channel: str, nick: str, affiliation: str, present: bool, reason: str | None) -> list[str]:
    """
    outcast → +b ``nick!*@*`` and, if ``present`` in the channel, KICK; none → -b.
    Other affiliations (member, admin, owner) have no IRC meaning of their own.
    """
    if affiliation == "outcast":
        lines = [f"MODE {channel} +b {ban_mask(nick)}"]
        return lines + [kick_line(channel, nick, reason)] if present else lines
    if affiliation == "none":
        return [f"MODE {channel} -b {ban_mask(nick)}"]
    if affiliation in ("member", "admin", "owner"):
        raise GatewayError(f"an IRC channel has no '{affiliation}' affiliation: give a role instead "
                           "(moderator is channel operator, participant is voice)", "feature-not-implemented",
                           "cancel")
    raise GatewayError(f"no such affiliation: {affiliation!r}", "bad-request", "modify")


def _param(params: list[str], index: int | None) -> str | None:
    """A numeric's parameter at ``index``, lower case (IRC names are case-insensitive), or None."""
    return params[index].lower() if index is not None and len(params) > index else None


@dataclass
class Change:
    """One change awaiting the server's verdict."""

    token: str
    channel: str
    nick: str
    #: KICKs of these nicks (lower case) must be echoed for the change to count as done.
    kicks: set[str] = field(default_factory=set)
    deferred: defer.Deferred = field(default_factory=defer.Deferred)
    error: GatewayError | None = None
    timer: object = None


class Verdicts:
    """The changes one connection awaits a verdict on, oldest first."""

    _tokens = itertools.count(1)

    def __init__(self, clock, server: str, timeout: float = TIMEOUT):
        self.clock = clock
        self.server = server
        self.timeout = timeout
        self.pending: list[Change] = []

    def start(self, channel: str, nick: str, lines: list[str], send) -> defer.Deferred:
        """Send ``lines`` then the PING (through ``send``, a list of lines); fires with None once done."""
        if not lines:
            return defer.succeed(None)                # nothing would change
        if len(self.pending) >= MAX_PENDING:
            return defer.fail(GatewayError(f"{MAX_PENDING} changes already wait for {self.server} to answer; "
                                           "try again shortly", "resource-constraint", "wait"))
        change = Change(token=f"xg-mod-{next(self._tokens)}", channel=channel.lower(), nick=nick.lower())
        change.kicks = {line.split(" ")[2].lower() for line in lines if line.startswith("KICK ")}
        change.timer = self.clock.callLater(self.timeout, self._expired, change)
        self.pending.append(change)
        send(lines + [f"PING :{change.token}"])
        return change.deferred

    def _finish(self, change: Change, error: GatewayError | None) -> None:
        if change in self.pending:
            self.pending.remove(change)
        if change.timer is not None and change.timer.active():
            change.timer.cancel()
        if error is None:
            change.deferred.callback(None)
        else:
            change.deferred.errback(error)

    def _expired(self, change: Change) -> None:
        change.timer = None
        self._finish(change, GatewayError(f"{self.server} did not answer within {self.timeout:g} s",
                                          "remote-server-timeout", "wait"))

    def kicked(self, channel: str, nick: str, by_us: bool) -> None:
        """A KICK seen: it is the echo of one we asked for when it is ours."""
        if not by_us:
            return
        for change in self.pending:
            if change.channel == channel.lower() and nick.lower() in change.kicks:
                change.kicks.discard(nick.lower())
                return

    def numeric(self, numeric: str, params: list[str]) -> bool:
        """An error numeric: it fails the oldest change it is about. Whether it was one of ours."""
        condition = CONDITIONS.get(numeric)
        if condition is None or not self.pending:
            return False
        channel, nick = _param(params, _CHANNEL_AT.get(numeric)), _param(params, _NICK_AT.get(numeric))
        for change in self.pending:
            if change.error is None and (channel is None or channel == change.channel) and (
                    nick is None or nick == change.nick):
                words = text.clean(params[-1] if params else "", 200)
                change.error = GatewayError(f"{self.server}: {words}" if words else
                                            f"{self.server} refused ({numeric})",
                                            condition, "auth" if condition == "forbidden" else "cancel")
                return True
        return False

    def pong(self, token: str) -> bool:
        """The PONG after a change: its verdict. Whether the token was ours."""
        for change in self.pending:
            if change.token == token:
                error = change.error
                if error is None and change.kicks:
                    error = GatewayError(f"{self.server} did not remove {', '.join(sorted(change.kicks))}",
                                         "item-not-found", "cancel")
                self._finish(change, error)
                return True
        return False

    def lost(self) -> None:
        """The connection is gone: nothing pending will be answered."""
        for change in list(self.pending):
            self._finish(change, GatewayError(f"connection to {self.server} lost before it answered",
                                              "remote-server-timeout", "wait"))
