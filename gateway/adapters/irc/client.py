"""
One IRC connection, on Twisted's IRCClient, with what it lacks: IRCv3 CAP
negotiation with SASL PLAIN, server-time and message tags; a fallback charset for
non-UTF-8 servers; and an outgoing token bucket instead of a fixed line delay.
Events go to the session that owns the connection.
"""

from __future__ import annotations

import base64
import calendar
import time

from twisted.words.protocols import irc

from gateway import __version__
from gateway.adapters.irc import text

WANTED_CAPS = ("server-time", "message-tags", "multi-prefix")


def parse_tags(raw: str) -> dict[str, str]:
    tags = {}
    for item in raw.split(";"):
        key, _, value = item.partition("=")
        value = (value.replace("\\:", ";").replace("\\s", " ").replace("\\r", "\r").replace("\\n", "\n")
                 .replace("\\\\", "\\"))
        tags[key] = value
    return tags


def server_time(tags: dict[str, str]) -> float | None:
    stamp = tags.get("time")
    if not stamp:
        return None
    try:
        return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + (
            float("0" + stamp[19:].rstrip("Z")) if "." in stamp[19:] else 0.0)
    except ValueError:
        return None


class IRCConnection(irc.IRCClient):
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
        self._caps_done = False
        rate, burst = session.adapter.config["throttle_rate"], session.adapter.config["throttle_burst"]
        self._rate, self._burst = rate, float(burst)
        self._tokens, self._last = float(burst), time.monotonic()
        self._pending: list[str] = []
        self._drain = None

    # -- registration with CAP ---------------------------------------------------

    def connectionMade(self):
        self.supported = irc.ServerSupportedFeatures()
        self._queue = []
        self.sendLine("CAP LS 302")
        self.register(self.nickname)

    def irc_CAP(self, prefix, params):
        sub = params[1].upper() if len(params) > 1 else ""
        if sub == "LS":
            offered = {c.split("=", 1)[0] for c in params[-1].split()}
            if len(params) > 3 and params[2] == "*":
                self._offered = getattr(self, "_offered", set()) | offered
                return
            offered |= getattr(self, "_offered", set())
            want = [c for c in WANTED_CAPS if c in offered]
            if self.sasl and "sasl" in offered:
                want.append("sasl")
            if want:
                self.sendLine("CAP REQ :" + " ".join(want))
            else:
                self._cap_end()
        elif sub == "ACK":
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

    # -- incoming lines ------------------------------------------------------------

    def lineReceived(self, line):
        if isinstance(line, bytes):
            line = text.decode(line, self.fallback)
        self.tags = {}
        if line.startswith("@"):
            raw, _, line = line[1:].partition(" ")
            self.tags = parse_tags(raw)
        super().lineReceived(line)

    def signedOn(self):
        self.session.signed_on(self)

    def irc_ERR_NICKNAMEINUSE(self, prefix, params):
        self.session.nick_in_use(self, params[1] if len(params) > 1 else self.nickname)

    def alterCollidedNick(self, nickname):
        return nickname + "_"

    def nickChanged(self, nick):
        super().nickChanged(nick)
        self.session.own_nick_changed(nick)

    def joined(self, channel):
        self.session.on_self_joined(channel)

    def irc_RPL_NAMREPLY(self, prefix, params):
        self.session.on_names(params[2], params[3].split())

    def irc_RPL_ENDOFNAMES(self, prefix, params):
        self.session.on_end_of_names(params[1])

    def topicUpdated(self, user, channel, newTopic):
        self.session.on_topic(user.split("!", 1)[0], channel, newTopic)

    def irc_RPL_NOTOPIC(self, prefix, params):
        self.session.on_topic("", params[1], "")

    def userJoined(self, user, channel):
        self.session.on_join(user.split("!", 1)[0], channel)

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

    def action(self, user, channel, data):
        self.session.on_message(user.split("!", 1)[0], channel, "/me " + data, self.tags)

    def noticed(self, user, channel, message):
        if "!" in (user or ""):
            self.session.on_message(user.split("!", 1)[0], channel, message, self.tags, notice=True)

    def irc_RPL_LIST(self, prefix, params):
        users = int(params[2]) if len(params) > 2 and params[2].isdigit() else 0
        self.session.on_list_entry(params[1], users, params[3] if len(params) > 3 else "")

    def irc_RPL_LISTEND(self, prefix, params):
        self.session.on_list_end()

    def irc_ERR_BANNEDFROMCHAN(self, prefix, params):
        self.session.on_join_refused(params[1], "forbidden", params[-1])

    irc_ERR_INVITEONLYCHAN = irc_ERR_CHANNELISFULL = irc_ERR_BADCHANNELKEY = irc_ERR_BANNEDFROMCHAN

    def irc_ERR_NOSUCHCHANNEL(self, prefix, params):
        self.session.on_join_refused(params[1], "item-not-found", params[-1])

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if self._drain is not None and self._drain.active():
            self._drain.cancel()
        self.session.connection_lost(self, reason)

    # -- outgoing, throttled ---------------------------------------------------------

    def send_lines(self, lines: list[str]) -> None:
        """Queue lines behind the token bucket (bursts of ``burst``, then ``rate`` per second)."""
        self._pending.extend(lines)
        self._flush()

    def _flush(self) -> None:
        self._drain = None
        if self._rate <= 0:
            for line in self._pending:
                self.sendLine(line)
            self._pending = []
            return
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        while self._pending and self._tokens >= 1:
            self.sendLine(self._pending.pop(0))
            self._tokens -= 1
        if self._pending:
            self._drain = self.session.adapter.context.clock.callLater((1 - self._tokens) / self._rate, self._flush)
