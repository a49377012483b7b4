"""
One user's presence on one IRC server: a single connection shared by every XMPP
resource of the user, the rooms joined and which resources joined each, the
occupants with their channel modes, reconnection with backoff and rejoin. IRC
events become XEP-0045 room events for the joined resources.

What the server sends is bounded here: the names of a room (``max_names``; the
join completes with what came and the user is told the list was cut; a name
longer than text.NAME_LIMIT is not kept, so the bound is one on bytes too), its
occupants, the LIST answer (``max_list``, ``list_timeout``); and every string
of a room event or private message passes text.clean / text.clean_name in
``_event`` and ``on_message``, the two places the neutral model is built.
"""

from __future__ import annotations

import functools

from collections import deque

from twisted.internet import defer, error, protocol, ssl
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import metrics

from gateway.adapters.irc import members, moderation, policy, text
from gateway import fallback
from gateway.adapters.irc.client import (MAX_PENDING_LINES, IRCConnection, Outgoing, QueueFull, encode_tags, safe_msgid,
                                          server_time)
from gateway.adapters.irc.raw import ServerReplies
from gateway.adapters.irc.scheduler import CONNECTED, Ticket, backoff
from gateway.model import (GatewayError, InboundMessage, LostOwnership, OutboundMessage, PermanentFailure, RoomEvent,
                           TemporaryFailure)

log = Logger(namespace="gateway.adapters.irc")

PREFIXES = members.PREFIXES
#: IRCv3 +typing values for XEP-0085 states, and back.
TYPING_OUT = {"composing": "active", "paused": "paused"}
TYPING_IN = {"active": "composing", "paused": "paused", "done": "active"}
#: The longest reaction taken from a +draft/react tag.
REACTION_LIMIT = 32
#: Messages awaiting their echo (echo-message) per target, and targets, kept at most.
ECHO_HOLD = 100
ECHO_TARGETS = 100
ROLE = {"~": ("moderator", "owner"), "&": ("moderator", "admin"), "@": ("moderator", "admin"),
        "%": ("moderator", "member"), "+": ("participant", "member")}

#: How long a private message that failed here keeps later ones of its
#: conversation waiting for its retry: longer than the outbox's longest backoff
#: (retry_max 300 s, +20 % jitter), short enough that a message retried
#: elsewhere or given up does not hold the conversation for long.
ORDER_HOLD = 600.0
#: Seconds a server's channel list answers later room-list requests; then it is
#: dropped, not kept for the life of the connection (up to ``max_list`` entries each).
LIST_CACHE = 60.0

#: Channels with more occupants than this get no WHO at join (on servers without
#: userhost-in-names): the answer would be one line per occupant, and their
#: hosts (shown in their real JIDs) are learnt as they join, part and talk.
WHO_LIMIT = 1000
#: Other users' sessions in the same channel asked for the hosts they know, at one join.
BORROW_FROM = 3
#: Invitations from IRC passed on to the user per connection and minute.
INVITES_PER_MINUTE = 5
#: Private message targets remembered for a 401 (no such nick), and for how long (seconds).
NOSUCHNICK_TARGETS = 20
NOSUCHNICK_WINDOW = 60.0


class Backlog:
    """
    Private messages that failed here and wait for the outbox to retry them, per
    conversation, oldest first. The outbox retries every row after its own
    jittered backoff, so retries come back in any order, while on IRC nothing
    can reorder lines once sent: a message goes out only when no older message
    of its conversation is still owed. An entry not back within ``hold``
    seconds (taken over by another process, given up) stops holding others.
    """

    def __init__(self, clock, hold: float = ORDER_HOLD):
        self.clock = clock
        self.hold = hold
        self._owed: dict[tuple[str, str, str], dict[str, tuple[float, float]]] = {}

    def overtakes(self, key: tuple[str, str, str], message: OutboundMessage) -> bool:
        """Whether sending ``message`` now would pass an older message of its conversation still owed."""
        entries = self._owed.get(key)
        if not entries:
            return False
        now, mine, older = self.clock.seconds(), (message.created_at, message.id), False
        for mid, (created, failed) in list(entries.items()):
            if now - failed > self.hold:
                del entries[mid]
            elif mid != message.id and (created, mid) < mine:
                older = True
        if not entries:
            del self._owed[key]
        return older

    def owe(self, key: tuple[str, str, str], message: OutboundMessage) -> None:
        self._owed.setdefault(key, {})[message.id] = (message.created_at, self.clock.seconds())

    def settle(self, key: tuple[str, str, str], message: OutboundMessage) -> None:
        entries = self._owed.get(key)
        if entries is not None:
            entries.pop(message.id, None)
            if not entries:
                del self._owed[key]


class Room:
    # One per user and channel: slots, not a dict per room.
    __slots__ = ("channel", "resources", "occupants", "topic", "topic_by", "key", "joined", "ready", "names",
                 "names_cut", "was_ready", "told", "hosts", "name_hosts", "who_pending", "who_seen")

    def __init__(self, channel: str):
        self.channel = channel
        self.resources: dict[str, str] = {}     # resource -> the nick it asked for
        #: nick -> mode bits (members.BIT), nicks interned: see members.py.
        self.occupants: dict[str, int] = {}
        self.topic = ""
        self.topic_by = ""
        self.key = ""                               # channel key (the MUC join password)
        self.joined = False
        self.ready = False
        self.names: dict[str, int] = {}
        #: (user, host) of occupants, as JOIN, NAMES (userhost-in-names) or WHO showed them; only for
        #: nicks in ``occupants`` (so bounded with them), checked by text.userhost.
        self.hosts: dict[str, tuple[str, str]] = {}
        self.name_hosts: dict[str, tuple[str, str]] = {}
        #: The WHO sent at join is not answered yet; what it brought so far.
        self.who_pending = False
        self.who_seen: dict[str, tuple[str, str]] = {}
        #: NAMES brought more than max_names: the rest was not collected.
        self.names_cut = False
        #: The join completed once in this session: trouble is told as a room message, not a join error.
        self.was_ready = False
        #: Its resources were told the server cannot be reached: they hear when it can again.
        self.told = False

    def join_line(self) -> str:
        return f"JOIN {self.channel} {self.key}" if self.key else f"JOIN {self.channel}"


class _Factory(protocol.ClientFactory):
    """
    Builds the session's connections and reports how each attempt ended. No
    retry of its own (as ReconnectingClientFactory would): every attempt,
    reconnects too, is drawn from the adapter's scheduler.
    """

    noisy = False

    def __init__(self, session: "IRCSession"):
        self.session = session

    def buildProtocol(self, addr):
        p = IRCConnection(self.session)
        p.factory = self
        return p

    def clientConnectionFailed(self, connector, reason):
        self.session.attempt_ended(reason)

    def clientConnectionLost(self, connector, reason):
        self.session.attempt_ended(reason)


def _definite(reason: Failure) -> bool:
    """
    A failure that says the address is wrong (refused, no such host, a TLS
    certificate that does not verify), not that the server is busy: for a
    server never reached yet, the join fails at once instead of retrying.
    """
    if reason.check(error.ConnectionRefusedError, error.DNSLookupError, policy.DestinationRefused):
        return True
    try:
        from OpenSSL import SSL
        from service_identity.exceptions import CertificateError, VerificationError
    except ImportError:                                # pragma: no cover (both come with twisted[tls])
        return False
    return reason.check(SSL.Error, VerificationError, CertificateError) is not None


class IRCSession:
    # One per user and server, thousands in a gateway: slots instead of an instance dict of 30-odd keys.
    __slots__ = ("adapter", "context", "user", "server", "settings", "nick", "conn", "rooms", "factory", "connector",
                 "ticket", "failures", "_retry", "_notice", "_idle", "_trouble", "_attempt_why", "_server_error",
                 "_conn_reason", "_lost_at", "_ready", "closed", "signed_once", "sasl_ok", "_sasl_message",
                 "_nick_request", "_listing", "_list_cut", "_list_waiters", "_list_cache", "_list_drop", "replies",
                 "_endpoint", "verdicts", "_invite_window", "_echoes", "_written_to")

    def __init__(self, adapter, registration, server: str, nick: str):
        self.adapter = adapter
        self.context = adapter.context
        self.user = registration.jid
        self.server = server
        self.settings = adapter.server_settings(registration, server, nick)
        self.nick = self.settings["nick"]
        self.conn: IRCConnection | None = None
        self.rooms: dict[str, Room] = {}
        #: Per target, the first lines of messages awaiting the server's echo: (text, XMPP id, recipient).
        self._echoes: dict[str, deque[tuple[str, str, str]]] = {}
        #: Nicks (lower case) private messages were just written to, and when: a 401 for one is told.
        self._written_to: dict[str, float] | None = None
        self.factory: _Factory | None = None
        self.connector = None
        #: Our place with the adapter's scheduler for the attempt under way (or waiting).
        self.ticket: Ticket | None = None
        #: Attempts failed since the last sign-on (the backoff's exponent).
        self.failures = 0
        self._retry = None
        self._notice = None
        #: Fires ``idle_timeout`` after the last XMPP client left our rooms (None while one is in).
        self._idle = None
        #: (condition, text) of the last failed attempt: what the user is told.
        self._trouble: tuple[str, str] | None = None
        #: Why the attempt under way ended, when we know better than the socket does.
        self._attempt_why: tuple[str, str] | None = None
        self._server_error = ""
        #: How the protocol saw its connection end: more telling than what the factory is told (a
        #: certificate that does not verify reaches the factory as "aborted").
        self._conn_reason: Failure | None = None
        #: When the signed-on connection was lost (None while connected, or never connected).
        self._lost_at: float | None = None
        self._ready: list[defer.Deferred] = []
        self.closed = False
        self.signed_once = False
        self.sasl_ok = False
        self._sasl_message = ""
        #: (room, resource) that asked for the nick change in flight, to answer a refusal.
        self._nick_request: tuple[Room, str] | None = None
        self._listing: list[tuple[str, int, str]] | None = None
        self._list_cut = False
        self._list_waiters: list[defer.Deferred] = []
        self._list_cache: tuple[float, list] | None = None
        self._list_drop = None
        #: What the server answers the user's raw commands (made at the first one).
        self.replies: ServerReplies | None = None
        #: Kicks, mode changes and invitations asked for from XMPP, awaiting the server's verdict.
        self.verdicts = moderation.Verdicts(self.context.clock, server)
        #: [start, count] of the minute of invitations from IRC being passed on.
        self._invite_window = [0.0, 0]

    # -- connection ---------------------------------------------------------------

    def connect(self) -> None:
        """Start connecting (if not already): the first attempt waits for its turn with the scheduler."""
        if self.factory is not None or self.closed:
            return
        self._endpoint = self.adapter.endpoint(self.server, self.settings)
        self.factory = _Factory(self)            # only now: a failure above must not leave us half connected
        self._wait_began()
        self._queue()

    def _online(self) -> bool:
        """Whether the user has an XMPP client in one of our rooms (they are served first)."""
        return any(room.resources for room in self.rooms.values())

    def _queue(self) -> None:
        """Ask the scheduler for a turn; when its cap on connections holds us back, the joins hear it now."""
        self._retry = None
        if self.closed:
            return
        host, port, _, _ = self._endpoint
        ticket = self.adapter.scheduler.request(f"{host}:{port}", self.user, self._attempt, self._online)
        if ticket.waiting:
            self.ticket = ticket                  # (a ticket started at once was taken by _attempt)
        if ticket.capped():
            cap = self.adapter.config["max_connections_per_server"]
            self._trouble = ("resource-constraint", f"the gateway's limit of {cap} connections to {self.server} "
                                                    f"is reached: you are number {ticket.position()} in the queue")
            self._tell(*self._trouble)

    def _attempt(self, ticket: Ticket) -> None:
        """Our turn: connect (the destination is checked once; later attempts reuse the checked address)."""
        if self.closed:
            ticket.release()
            return
        self.ticket = ticket
        self._attempt_why, self._server_error, self._conn_reason = None, "", None
        metrics.IRC_CONNECT_ATTEMPTS.labels(*self._metric_labels()).inc()
        if self.connector is not None:
            self.connector.connect()
            return
        host, port, tls, verify = self._endpoint
        if self.adapter.trusted_destination(self.server, port):
            self._connect_to(host, host, port, tls, verify)
            return
        config = self.adapter.config
        try:
            policy.check_port(port, config["allowed_ports"])
        except policy.DestinationRefused as e:
            self.context.clock.callLater(0, self._refuse, e)
            return
        d = policy.resolve_destination(host, port, config["allow_private"])
        d.addCallbacks(lambda ip: self._connect_to(host, ip, port, tls, verify), self._refused)

    def _refused(self, failure) -> None:
        failure.trap(policy.DestinationRefused)
        self._refuse(failure.value)

    def _refuse(self, error: policy.DestinationRefused) -> None:
        if self.closed:
            return
        log.info("{user}: {server} refused by the destination policy: {why}", user=self.user, server=self.server,
                 why=error.text)
        self.fail_all(error.condition, error.text, error)

    def _connect_to(self, host: str, address: str, port: int, tls: bool, verify: bool) -> None:
        """Connect to ``address`` (the one checked), verifying TLS for ``host`` (the name asked for)."""
        if self.closed:
            return
        reactor = self.context.clock
        timeout = self.adapter.config["connect_timeout"]
        if tls:
            options = ssl.optionsForClientTLS(host) if verify else ssl.CertificateOptions()
            self.connector = reactor.connectSSL(address, port, self.factory, options, timeout=timeout)
        else:
            self.connector = reactor.connectTCP(address, port, self.factory, timeout=timeout)
        log.info("{user}: connecting to {server} ({host}:{port}, tls={tls})", user=self.user, server=self.server,
                 host=host if host == address else f"{host} [{address}]", port=port, tls=tls)

    def ready(self, timeout: float = 20.0) -> defer.Deferred:
        """Fires once signed on (connecting if needed); TemporaryFailure if that takes too long."""
        self.connect()
        if self.conn is not None:
            return defer.succeed(self.conn)
        d = defer.Deferred()
        self._ready.append(d)

        def late(failure):
            failure.trap(defer.TimeoutError)
            raise TemporaryFailure(f"not connected to {self.server} yet")

        return d.addTimeout(timeout, self.context.clock).addErrback(late)

    def channel_setting(self, channel: str, key: str):
        """The user's own setting for a channel (``configure`` on its JID, or muc#owner), or None."""
        return ((self.settings.get("channels") or {}).get(channel.lower()) or {}).get(key)

    def disconnect(self, reason: str) -> None:
        """Closed on request (a command): the user's clients hear they are out of every room first."""
        for room in self.rooms.values():
            if room.resources:
                self._event(room, "presence", nick=self.nick, unavailable=True, own=True,
                            reason=f"disconnected from {self.server}: {reason}")
        self.close(reason)

    def close(self, reason: str = "Leaving") -> None:
        if self.conn is not None and not self.closed:
            self.context.contact_status(self.user, self.server, False, f"disconnected from {self.server}: {reason}")
        self.closed = True
        for call in (self._retry, self._notice, self._idle, self._list_drop):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._notice = self._idle = self._list_drop = None
        self._list_cache = None
        if self.ticket is not None:
            self.ticket.release()
            self.ticket = None
        if self.conn is not None:
            # Nothing may be written after QUIT: waiting messages go back to the outbox now.
            self.conn.abandon(TemporaryFailure(f"connection to {self.server} closed"))
            self.conn.sendLine(f"QUIT :{text.one_line(reason)}")
            self.conn.transport.loseConnection()
        elif self.connector is not None:
            self.connector.disconnect()
        self.adapter.session_closed(self)

    def attempt_ended(self, reason: Failure) -> None:
        """
        An attempt failed, or a connection ended. A server never reached that
        gives a definite answer (refused, no such host, bad certificate) fails
        the joins at once; anything else (no welcome in time, the server's own
        ERROR, a connect timeout, a lost connection) is retried after a
        jittered backoff, through the scheduler, and the user is told why.
        """
        ticket, self.ticket = self.ticket, None
        was_on = ticket is not None and ticket.state == CONNECTED
        if ticket is not None:
            ticket.release()
        if self.closed:
            return
        if self._conn_reason is not None:
            reason = self._conn_reason
        why = self._attempt_why
        explained = why is not None or bool(self._server_error)
        if why is None and self._server_error:
            verb = "closed the connection" if was_on else "refused the connection"
            why = ("service-unavailable", f"{self.server} {verb}: {self._server_error}")
        if why is None:
            if not self.signed_once and _definite(reason):
                text_ = f"cannot connect to {self.server}: {reason.getErrorMessage()}"
                log.warn("{user}: {why}", user=self.user, why=text_)
                self.fail_all("remote-server-not-found", text_, TemporaryFailure(text_))
                return
            verb = "connection to" if was_on else "cannot connect to"
            why = ("remote-server-timeout", f"{verb} {self.server}: {reason.getErrorMessage()}")
        self._trouble = why
        if not self.signed_once and not self.rooms and not any(not d.called for d in self._ready):
            log.info("{user}: {why}; nobody waits for {server} any more", user=self.user, why=why[1],
                     server=self.server)
            self.close()                              # opened for a message or a list that gave up waiting
            return
        if was_on:
            self.failures = 0
            self._lost_at = self.context.clock.seconds()
            self._wait_began()                        # the user hears if we are not back by notify_after
        elif explained:
            # A join waiting for this attempt is told at once why (no welcome, the server's ERROR). A bare
            # reset or timeout waits for notify_after: by then a later attempt may have brought the server's
            # reason (an ERROR written at accept is lost to a reset when our lines arrived first).
            self._tell(*why)
        self.failures += 1
        delay = backoff(self.failures, 1.0, self.adapter.config["reconnect_max_delay"])
        log.info("{user}: {why}; attempt {n} in {delay:.1f} s", user=self.user, why=why[1], n=self.failures + 1,
                 delay=delay)
        self._retry = self.context.clock.callLater(delay, self._queue)

    def _watch_idle(self) -> None:
        """
        The idle policy: a connection none of the user's XMPP clients is using
        (no resource in any of its rooms) is closed ``idle_timeout`` seconds
        later unless one comes back. Without it a ``persistent`` connection,
        or one opened for a private message, would stay on the network for
        ever after the user's last client went offline: a ghost in the
        network's user list, holding a place under its per-address limits.
        """
        timeout = self.adapter.config.get("idle_timeout") or 0
        if self._online() or self.closed or not timeout:
            if self._idle is not None and self._idle.active():
                self._idle.cancel()
            self._idle = None
            return
        if self._idle is None or not self._idle.active():
            self._idle = self.context.clock.callLater(timeout, self._reap)

    def _reap(self) -> None:
        self._idle = None
        if self.closed or self._online():
            return
        timeout = self.adapter.config.get("idle_timeout") or 0
        log.info("{user}: no XMPP client in a room on {server} for {timeout:g} s: disconnecting", user=self.user,
                 server=self.server, timeout=timeout)
        if self.conn is not None:
            for room in list(self.rooms.values()):
                if room.joined:
                    self.conn.sendLine(f"PART {room.channel}")
        self.close("No client online")

    def server_error(self, message: str) -> None:
        """The server's ERROR line (``Closing Link: ... (Connection limit reached)``): the reason users see."""
        self._server_error = text.clean(message, 300)

    # -- telling the user -----------------------------------------------------------

    def _wait_began(self) -> None:
        """From now the user waits for a connection: past ``notify_after`` they are told why."""
        if self._notice is not None and self._notice.active():
            self._notice.cancel()
        self._notice = self.context.clock.callLater(self.adapter.config["notify_after"], self._notify)

    def _notify(self) -> None:
        self._notice = None
        if self.closed or self.conn is not None:
            return
        condition, why = self._trouble or self._waiting_why()
        if self._lost_at is not None and not why.startswith(f"connection to {self.server} lost"):
            ago = self.context.clock.seconds() - self._lost_at
            why = f"connection to {self.server} lost {ago:.0f} s ago, not back yet: {why}"
        self._tell(condition, why, everyone=True)

    def _waiting_why(self) -> tuple[str, str]:
        ticket = self.ticket
        if ticket is not None and ticket.waiting:
            return ("resource-constraint", f"waiting for a turn to connect to {self.server}: number "
                                           f"{ticket.position()} of {ticket.queue_length()} in the queue")
        return "remote-server-timeout", f"still connecting to {self.server} (attempt {self.failures + 1})"

    def _tell(self, condition: str, reason: str, everyone: bool = False, only: tuple[Room, str] | None = None) -> None:
        """
        Tell the rooms waiting for this connection why (once per outage): a
        join not yet completed gets a join error (the session keeps trying and
        completes the join later), a room already joined gets a message from
        the room (with ``everyone``: at ``notify_after``, a short blip says nothing).
        ``only``: (room, resource), one more resource joining a room already told.
        """
        rooms, resources = ([only[0]], [only[1]]) if only else (list(self.rooms.values()), None)
        for room in rooms:
            if room.told and only is None:
                continue
            if not room.was_ready:
                self._event(room, "join-error", resources, nick=self.nick, condition=condition,
                            reason=f"{reason}; still trying: you will join when it lets you in")
            elif everyone:
                self._event(room, "message", resources, body=f"{reason}; reconnecting: you will be back in "
                                                             f"{room.channel} when it lets you in")
            else:
                continue
            room.told = True

    def fail_all(self, condition: str, reason: str, error: Exception) -> None:
        """Every room waiting here gets a join error, every waiter ``error``; the session ends."""
        for room in list(self.rooms.values()):
            self._event(room, "join-error", nick=self.nick, condition=condition, reason=reason)
        self.rooms.clear()
        ready, self._ready = self._ready, []
        for d in ready:
            d.errback(error)
        self.close()

    def registration_timed_out(self, conn: IRCConnection, timeout: float) -> None:
        """
        The server kept us from signing on (CAP or SASL never ending, no welcome)
        past the deadline; the connection is dropped and the attempt retried. A
        full listen backlog can leave us "connected" to a server that never
        accepted: without this deadline such a session would wait forever.
        """
        text_ = f"{self.server} did not complete registration (no welcome) within {timeout:g} s"
        log.warn("{user}: {why}; disconnecting", user=self.user, why=text_)
        self._attempt_why = ("remote-server-timeout", text_)

    def sasl_unavailable(self, conn: IRCConnection, why: str) -> None:
        """
        SASL was configured but the server offers none, or refused it: the
        password is not sent anywhere else (a nick named NickServ may be anyone).
        """
        text_ = f"{self.server}: {why}; your SASL password was not sent"
        log.warn("{user}: {why}", user=self.user, why=text_)
        self.fail_all("not-authorized", text_, PermanentFailure(text_, "not-authorized"))

    def overlong_lines(self, count: int) -> None:
        log.warn("{user}: {server} sent {n} line(s) longer than the IRC limit; skipped", user=self.user,
                 server=self.server, n=count)

    def signed_on(self, conn: IRCConnection) -> None:
        old = self.conn
        if old is not None and old is not conn:
            # Replaced: what waits on the old connection goes back to the outbox, not out twice.
            old.abandon(TemporaryFailure(f"connection to {self.server} replaced"))
            old.transport.loseConnection()
        if self.settings.get("sasl_password") and not self.sasl_ok:
            # No fallback to "PRIVMSG NickServ": on a network without services that nick is anyone's.
            self.sasl_unavailable(conn, f"SASL failed ({self._sasl_message})" if self._sasl_message
                                  else "the server does not offer SASL")
            conn.transport.loseConnection()
            return
        self._count_signed_on(old is None)
        self.conn = conn
        self.signed_once = True
        self.nick = conn.nickname
        self.failures, self._trouble, self._lost_at = 0, None, None
        if self.ticket is not None:
            self.ticket.signed_on()
        if self._notice is not None and self._notice.active():
            self._notice.cancel()
        self._notice = None
        log.info("{user}: signed on to {server} as {nick}", user=self.user, server=self.server, nick=self.nick)
        self._tell_status()
        for command in self.settings.get("commands", []):
            line = text.one_line(command)
            if line:
                conn.send_lines([line])
        for room in self.rooms.values():
            conn.send_lines([room.join_line()])
        ready, self._ready = self._ready, []
        for d in ready:
            d.callback(conn)
        self._watch_idle()

    def sasl_result(self, ok: bool, message: str) -> None:
        self.sasl_ok = ok
        self._sasl_message = text.clean(message, 200)
        log.info("{user}: SASL on {server}: {result} ({msg})", user=self.user, server=self.server,
                 result="ok" if ok else "failed", msg=message)

    def nick_in_use(self, conn: IRCConnection, nick: str) -> None:
        if conn._registered:
            # A nick change the user asked for: refuse it to them (XEP-0045: <conflict/>), keep the old one.
            if self._nick_request is not None:
                room, resource = self._nick_request
                self._nick_request = None
                self._event(room, "join-error", [resource], nick=nick, condition="conflict",
                            reason=f"{nick} is already in use on {self.server}")
            return
        new = conn.alterCollidedNick(nick)          # while registering: take a variant (status 210)
        conn.setNick(new)
        conn.nickname = new

    def _metric_labels(self) -> tuple[str, str]:
        """Servers the operator configured by name; any other (user-chosen, unbounded) as "other"."""
        config = self.adapter.config
        known = self.server in (config.get("servers") or {}) or self.server in (config.get("allowed_servers") or ()) \
            or self.server == config.get("fixed_server")
        return self.context.component, self.server if known else "other"

    def _count_signed_on(self, new: bool) -> None:
        labels = self._metric_labels()
        if new:
            metrics.IRC_CONNECTIONS.labels(*labels).inc()
        if self.signed_once:
            metrics.IRC_RECONNECTS.labels(*labels).inc()

    def connection_lost(self, conn: IRCConnection, reason) -> None:
        if self.conn is not None and self.conn is not conn:
            return                                   # a replaced connection: the rooms live on the new one
        self._conn_reason = reason
        if self.conn is conn:
            labels = self._metric_labels()
            metrics.IRC_CONNECTIONS.labels(*labels).dec()
            metrics.IRC_DISCONNECTS.labels(*labels).inc()
        self.conn = None
        self.verdicts.lost()
        for room in self.rooms.values():
            room.joined = room.ready = False
            room.occupants.clear()
            room.hosts.clear()
            room.who_pending = False
        if not self.closed and self.signed_once:
            log.warn("{user}: connection to {server} lost ({why})", user=self.user, server=self.server,
                     why=reason.getErrorMessage())
            self.context.contact_status(self.user, self.server, False,
                                        f"connection to {self.server} lost: {text.clean(reason.getErrorMessage())}")

    # -- rooms from XMPP ------------------------------------------------------------

    def room_address(self, channel: str) -> str:
        return f"{channel.lower()}%{self.server}"

    def _event(self, room: Room, kind: str, resources=None, **kw) -> None:
        """The one door from IRC to the room events: every name and text in it is cleaned here."""
        if kind == "presence" and kw.get("nick") and not kw.get("own") and "occupant_user" not in kw:
            found = room.hosts.get(kw["nick"])        # checked by text.userhost when stored
            if found is not None:
                kw["occupant_user"], kw["occupant_host"] = found
        for key in ("nick", "new_nick"):
            if kw.get(key):
                kw[key] = text.clean_name(kw[key])
        for key in ("reason", "body", "subject"):
            if kw.get(key):
                kw[key] = text.clean(kw[key])
        self.context.room_event(RoomEvent(component=self.context.component, user=self.user,
                                          resources=list(room.resources) if resources is None else resources,
                                          room=self.room_address(room.channel), kind=kind, **kw))

    def join(self, resource: str, channel: str, nick: str, password: str | None = None) -> None:
        key = channel.lower()
        room = self.rooms.get(key)
        first = room is None
        if self.conn is not None and len(self.conn._pending or ()) >= MAX_PENDING_LINES:
            # Joins (and the PARTs that leaving them costs) within the send queue's bound: presences
            # are not rate limited, and join/leave cycles would queue lines without end.
            raise QueueFull(f"IRC send queue full: {MAX_PENDING_LINES} lines already wait to go to {self.server} "
                            "behind the send throttle; try again later")
        if first:
            room = self.rooms[key] = Room(channel)
        if password:
            room.key = text.one_line(password).replace(" ", "")
        if resource in room.resources and room.ready and nick != self.nick and self.conn is not None:
            # XEP-0045 nick change: presence to room/newnick while joined. IRC nicks are per connection.
            # Within the send queue's bound (QueueFull past it): presences are not rate limited.
            self.conn.send_message([f"NICK {nick}"]).done.addErrback(lambda f: None)
            room.resources[resource] = nick
            self._nick_request = (room, resource)
            return
        room.resources[resource] = nick
        told = room.told
        self._watch_idle()                           # a client is in: the idle clock stops
        self.connect()
        if self.conn is None:
            if told and self._trouble is not None:
                self._tell(*self._trouble, only=(room, resource))   # the same answer as the others got
            return                                   # JOIN goes out when signed on
        if first or not room.joined:
            self.conn.send_lines([room.join_line()])
        elif room.ready:
            self._send_state(room, [resource])       # another resource: the connection is shared

    def leave(self, resource: str, channel: str) -> None:
        key = channel.lower()
        room = self.rooms.get(key)
        if room is None or resource not in room.resources:
            return
        del room.resources[resource]
        self._event(room, "presence", [resource], nick=self.nick, unavailable=True, own=True)
        if room.resources:
            return
        if self.channel_setting(room.channel, "persistent"):
            self._watch_idle()                       # the user's choice: stay in the channel, seen from IRC
            return
        del self.rooms[key]
        if self.conn is not None:
            self.conn.send_lines([f"PART {room.channel}"])
        if not self.rooms and (not self.adapter.config["persistent"] or not self.signed_once):
            self.close("Left every room")
            return
        self._watch_idle()

    def _role(self, modes: int) -> tuple[str, str]:
        prefix = members.highest(modes)
        if prefix is not None:
            return ROLE[prefix]
        return self.adapter.config["default_role"], "none"

    def _send_state(self, room: Room, resources: list[str]) -> None:
        """A join as XMPP clients expect it: every occupant, then the user's own presence, then the subject."""
        for nick, modes in sorted(room.occupants.items()):
            if nick != self.nick:
                role, aff = self._role(modes)
                self._event(room, "presence", resources, nick=nick, role=role, affiliation=aff)
        role, aff = self._role(room.occupants.get(self.nick, 0))
        for resource in resources:
            self._event(room, "presence", [resource], nick=self.nick, role=role, affiliation=aff, own=True,
                        joined=True, nick_assigned=room.resources.get(resource) != self.nick)
        self._event(room, "subject", resources, nick=room.topic_by or None, subject=room.topic)

    # -- IRC events ---------------------------------------------------------------------

    def _room(self, channel: str) -> Room | None:
        return self.rooms.get(channel.lower())

    def on_self_joined(self, channel: str, found: tuple[str, str] | None = None) -> None:
        room = self._room(channel)
        if room is None:                               # joined by a command after connect: not ours
            return
        room.joined = True
        room.names = {}
        room.name_hosts = {}
        room.names_cut = False
        room.hosts = {self.nick: found} if found is not None else {}

    def _ask_who(self, room: Room) -> None:
        """
        One WHO at join when NAMES did not bring every occupant's user and host
        (no userhost-in-names) and the channel is not too big for it (WHO_LIMIT);
        the answers update the occupants' presences (their real JIDs) at its end.
        """
        if self.conn is None or room.who_pending or len(room.occupants) > WHO_LIMIT:
            return
        self._borrow_hosts(room)
        if all(nick in room.hosts for nick in room.occupants if nick != self.nick):
            return
        room.who_pending, room.who_seen = True, {}
        self.conn.send_lines([f"WHO {room.channel}"])

    def _borrow_hosts(self, room: Room) -> None:
        """
        Hosts another of our users in the same channel of the same server knows
        already (kept up to date by their own session's JOINs, nick changes and
        parts): with many users in one channel, only the first one's join needs
        a WHO, not every one's (which would cost the server occupants × users lines).
        """
        missing = [nick for nick in room.occupants if nick not in room.hosts and nick != self.nick]
        key, asked = room.channel.lower(), 0
        for other in self.adapter.sessions_on(self.server):
            if not missing or asked >= BORROW_FROM:
                return
            theirs = other.rooms.get(key) if other is not self and not other.closed else None
            if theirs is None or not theirs.ready:
                continue
            asked += 1
            missing = [nick for nick in missing if not _borrow(room, theirs, nick)]

    def on_who_reply(self, channel: str, user: str, host: str, nick: str) -> None:
        room = self._room(channel)
        if room is None or not room.who_pending or nick not in room.occupants:
            return                                     # a WHO the user typed, or someone gone: not collected
        found = text.userhost(user, host)
        if found is not None:
            room.who_seen[nick] = members.userhost(found)

    def on_end_of_who(self, channel: str) -> None:
        room = self._room(channel)
        if room is None or not room.who_pending:
            return
        seen, room.who_pending, room.who_seen = room.who_seen, False, {}
        for nick, found in sorted(seen.items()):
            if nick not in room.occupants or room.hosts.get(nick) == found:
                continue
            room.hosts[nick] = members.userhost(found)
            if room.ready and nick != self.nick:
                role, aff = self._role(room.occupants[nick])
                self._event(room, "presence", nick=nick, role=role, affiliation=aff)

    def on_names(self, channel: str, names: list[str]) -> None:
        room = self._room(channel)
        if room is None or room.ready:
            return                                     # a NAMES not asked for by our join: nothing to collect
        limit = self.adapter.config["max_names"]
        for entry in names:
            modes, entry = members.split_prefixes(entry)
            entry, found = text.split_prefix(entry)     # nick!user@host with userhost-in-names
            if not _keepable(entry):
                continue
            if len(room.names) >= limit and entry not in room.names:
                # Stop collecting: the join completes now with what came, and says so.
                room.names_cut = True
                self.on_end_of_names(channel)
                return
            entry = members.nick(entry)
            room.names[entry] = modes
            if found is not None:
                room.name_hosts[entry] = members.userhost(found)

    def on_end_of_names(self, channel: str) -> None:
        room = self._room(channel)
        if room is None or room.ready:
            return
        room.occupants, room.names = room.names, {}
        mine = room.hosts.get(self.nick)
        room.hosts = {nick: found for nick, found in room.name_hosts.items() if nick in room.occupants}
        room.name_hosts = {}
        if mine is not None:
            room.hosts[self.nick] = mine
        room.occupants.setdefault(members.nick(self.nick), 0)
        self._ask_who(room)
        room.ready = room.was_ready = True
        self._send_state(room, list(room.resources))
        if room.told:
            room.told = False
            self._event(room, "message", body=f"connected to {self.server}: you are in {room.channel}")
        if room.names_cut:
            limit = self.adapter.config["max_names"]
            self._event(room, "message", body=f"{self.server} sent more than {limit} names for {room.channel}: "
                                              f"the list of occupants is cut at {limit}")

    def on_topic(self, nick: str, channel: str, topic: str) -> None:
        room = self._room(channel)
        if room is None:
            return
        room.topic, room.topic_by = text.clean(topic), nick
        if room.ready:
            self._event(room, "subject", nick=nick or None, subject=room.topic)

    def on_join(self, nick: str, channel: str, found: tuple[str, str] | None = None) -> None:
        room = self._room(channel)
        if room is not None and room.ready and _keepable(nick) and (
                nick in room.occupants or len(room.occupants) < self.adapter.config["max_names"]):
            room.occupants[members.nick(nick)] = 0
            if found is not None:
                room.hosts[nick] = members.userhost(found)
            role, aff = self._role(0)
            self._event(room, "presence", nick=nick, role=role, affiliation=aff)

    def on_part(self, nick: str, channel: str, reason: str | None) -> None:
        room = self._room(channel)
        if room is not None and room.occupants.pop(nick, None) is not None:
            self._event(room, "presence", nick=nick, unavailable=True, reason=reason)
            room.hosts.pop(nick, None)

    def on_self_part(self, channel: str) -> None:
        room = self._room(channel)
        if room is not None:
            room.joined = room.ready = False

    def on_quit(self, nick: str, reason: str) -> None:
        for room in self.rooms.values():
            if room.occupants.pop(nick, None) is not None:
                self._event(room, "presence", nick=nick, unavailable=True, reason=reason or None)
                room.hosts.pop(nick, None)

    def on_kick(self, kickee: str, channel: str, kicker: str, reason: str) -> None:
        self.verdicts.kicked(channel, kickee, kicker == self.nick)
        room = self._room(channel)
        if room is None:
            return
        room.occupants.pop(kickee, None)
        self._event(room, "presence", nick=kickee, unavailable=True, kicked=True, own=kickee == self.nick,
                    actor=kicker, reason=f"{reason} (by {kicker})" if reason else f"kicked by {kicker}")
        room.hosts.pop(kickee, None)
        if kickee == self.nick:
            del self.rooms[channel.lower()]

    def on_nick(self, old: str, new: str) -> None:
        mine = old == self.nick
        if not mine and not _keepable(new):
            self.on_quit(old, "")                    # a name we do not keep: the occupant leaves our view
            return
        if mine:
            self.nick = new
        for room in self.rooms.values():
            if old in room.occupants:
                modes = room.occupants.pop(old)
                room.occupants[members.nick(new)] = modes
                if old in room.hosts:
                    room.hosts[members.nick(new)] = room.hosts.pop(old)
                role, aff = self._role(modes)
                self._event(room, "presence", nick=old, unavailable=True, new_nick=new, own=mine,
                            role=role, affiliation=aff)
                self._event(room, "presence", nick=new, role=role, affiliation=aff, own=mine)

    def own_nick_changed(self, nick: str) -> None:
        """The server confirmed a new nick for us (asked for, or forced): every room hears our nick change."""
        self._nick_request = None
        if nick != self.nick:
            self.on_nick(self.nick, nick)

    def on_mode(self, channel: str, nick: str, mode: str, added: bool) -> None:
        room = self._room(channel)
        bit = members.MODE_BIT.get(mode)
        if room is None or bit is None or nick not in room.occupants:
            return
        modes = room.occupants[nick] | bit if added else room.occupants[nick] & ~bit
        room.occupants[nick] = modes
        role, aff = self._role(modes)
        self._event(room, "presence", nick=nick, role=role, affiliation=aff, own=nick == self.nick)

    def on_mode_line(self, channel: str, setter: str, change: str) -> None:
        """A channel's MODE, as biboumi shows it: a notice from the room ("Mode #chan [+o bob] by alice")."""
        room = self._room(channel)
        if room is not None and room.ready:
            self._event(room, "message", body=f"Mode {room.channel} [{text.clean(change, 400)}] by "
                                              f"{text.clean_name(setter)}")

    def on_invite(self, inviter: str, channel: str) -> None:
        """
        Someone on IRC invites the user into a channel: told from the room, to
        the user's bare JID; at most INVITES_PER_MINUTE (anyone may INVITE anyone).
        """
        name = text.clean_name(channel)
        if name != channel or not channel.startswith(("#", "&", "+", "!")) or len(channel) > 200:
            return                                    # no JID can name that room
        now = self.context.clock.seconds()
        if now - self._invite_window[0] > 60:
            self._invite_window = [now, 0]
        self._invite_window[1] += 1
        if self._invite_window[1] > INVITES_PER_MINUTE:
            return
        self.context.room_event(RoomEvent(component=self.context.component, user=self.user, resources=[""],
                                          room=self.room_address(channel), kind="invite",
                                          actor=text.clean_name(inviter),
                                          body=f"{text.clean_name(inviter)} invites you to {channel} on "
                                               f"{self.server}"))

    # -- moderation from XMPP (IModeration) ---------------------------------------------

    def _moderated(self, channel: str) -> Room:
        room = self._room(channel)
        if room is None or not room.ready or self.conn is None:
            raise GatewayError(f"join {channel} first", "forbidden", "auth")
        return room

    def _occupant(self, room: Room, nick: str) -> str | None:
        """The occupant's nick as the server spells it (IRC nicks are case-insensitive), or None."""
        if nick in room.occupants:
            return nick
        return next((n for n in room.occupants if n.lower() == nick.lower()), None)

    def set_role(self, channel: str, nick: str, role: str, reason: str | None) -> defer.Deferred:
        try:
            room = self._moderated(channel)
            found = self._occupant(room, nick) or nick
            lines = moderation.role_commands(room.channel, found, role, set(members.prefixes(room.occupants.get(found, 0))),
                                             reason)
        except GatewayError as e:
            return defer.fail(e)
        return self.verdicts.start(room.channel, found, lines, self.conn.send_lines)

    def set_affiliation(self, channel: str, nick: str, affiliation: str, reason: str | None) -> defer.Deferred:
        try:
            room = self._moderated(channel)
            found = self._occupant(room, nick)
            lines = moderation.affiliation_commands(room.channel, found or nick, affiliation, found is not None,
                                                    reason)
        except GatewayError as e:
            return defer.fail(e)
        return self.verdicts.start(room.channel, found or nick, lines, self.conn.send_lines)

    def invite(self, channel: str, nick: str) -> defer.Deferred:
        try:
            room = self._moderated(channel)
        except GatewayError as e:
            return defer.fail(e)
        return self.verdicts.start(room.channel, nick, [f"INVITE {nick} {room.channel}"], self.conn.send_lines)

    def on_pong(self, token: str) -> None:
        self.verdicts.pong(token)

    def on_message(self, nick: str, target: str, body: str, tags: dict, notice: bool = False) -> None:
        body = text.clean(body)
        if notice:
            body = text.NOTICE_MARK + body
        stamp, msgid = server_time(tags), safe_msgid(tags)
        ref = safe_msgid(tags, "+draft/reply")
        if target.startswith(("#", "&", "+", "!")):
            room = self._room(target)
            if room is not None and room.ready:
                # The server's msgid, when it sends one; else the bridge gives the line an id of
                # its own (the archive's), so that clients can answer, react to or correct-check it.
                self._event(room, "message", nick=nick, body=body, timestamp=stamp, stanza_id=msgid,
                            foreign_id=msgid, ref=ref)
            return
        self.context.deliver(InboundMessage(component=self.context.component, user=self.user,
                                            sender=f"{text.clean_name(nick).lower()}%{self.server}", body=body,
                                            timestamp=stamp, foreign_id=msgid, ref=ref)).addErrback(
            lambda f: log.failure("private message from {nick} not stored", f, nick=nick))

    def on_room_line(self, nick: str, channel: str, body: str, tags: dict, notice: bool) -> None:
        """
        on_message for the usual line, which the client's short path (client._ROOM_LINE) took
        without the general parser: ``nick`` and ``body`` are already what text.clean_name and
        text.clean leave them, so the event is built here without _event's walk over its fields.
        """
        room = self.rooms.get(channel.lower())
        if room is None or not room.ready:
            return
        if tags:
            stamp, msgid, ref = server_time(tags), safe_msgid(tags), safe_msgid(tags, "+draft/reply")
        else:
            stamp = msgid = ref = None
        self.context.room_event(RoomEvent(component=self.context.component, user=self.user,
                                          resources=list(room.resources), room=f"{room.channel.lower()}%{self.server}",
                                          kind="message", nick=nick, body=text.NOTICE_MARK + body if notice else body,
                                          timestamp=stamp, stanza_id=msgid, foreign_id=msgid, ref=ref))

    def on_tagmsg(self, nick: str, target: str, tags: dict) -> None:
        """A TAGMSG: typing (``+typing``) in a room, or a reaction (``+draft/react`` to ``+draft/reply``)."""
        state = TYPING_IN.get(tags.get("+typing", ""))
        reaction = text.clean(tags.get("+draft/react") or "", REACTION_LIMIT).strip()
        ref = safe_msgid(tags, "+draft/reply")
        if target.startswith(("#", "&", "+", "!")):
            room = self._room(target)
            if room is None or not room.ready or nick == self.nick:
                return
            if reaction and ref:
                self._event(room, "message", nick=nick, ref=ref, reactions=[reaction], stanza_id=safe_msgid(tags))
            elif state:
                self._event(room, "message", nick=nick, chat_state=state)
            return
        sender = f"{text.clean_name(nick).lower()}%{self.server}"
        if state and not reaction:
            self.context.typing(self.user, sender, state)
            return
        if reaction and ref:
            self.context.deliver(InboundMessage(component=self.context.component, user=self.user,
                                                sender=f"{text.clean_name(nick).lower()}%{self.server}",
                                                ref=ref, reactions=[reaction], foreign_id=safe_msgid(tags))
                                 ).addErrback(lambda f: log.failure("reaction from {nick} not stored", f, nick=nick))

    def _await_echo(self, message: OutboundMessage, target: str, lines: list[str]) -> None:
        """Note the first line of a message the server will echo, to learn its msgid from the echo."""
        if not lines or not message.xmpp_id or self.conn is None or "echo-message" not in self.conn.caps:
            return
        key = target.lower()
        waiting = self._echoes.get(key)
        if waiting is None:
            if len(self._echoes) >= ECHO_TARGETS:
                self._echoes.pop(next(iter(self._echoes)))
            waiting = self._echoes[key] = deque(maxlen=ECHO_HOLD)
        waiting.append((lines[0].split(" :", 1)[-1], message.xmpp_id, message.recipient))

    def on_echo(self, target: str, body: str, tags: dict) -> None:
        """
        The server's echo of one of our lines: the first line of a message awaited
        gives that message's msgid. Matched by its text, so a line the server
        refused (no echo) cannot shift the others; older entries are dropped then.
        """
        waiting = self._echoes.get(target.lower())
        msgid = safe_msgid(tags)
        if not waiting or not msgid:
            return
        for i, (text_sent, xmpp_id, contact) in enumerate(waiting):
            if text_sent == body:
                for _ in range(i + 1):
                    waiting.popleft()
                self.context.message_ref(self.user, contact, xmpp_id, msgid)
                return

    @property
    def tags_on(self) -> bool:
        """Whether the connection may send client tags (the server acknowledged message-tags)."""
        return self.conn is not None and "message-tags" in self.conn.caps

    def tagmsg(self, target: str, tags: dict[str, str]) -> None:
        """
        A TAGMSG (typing) where the server takes client tags; nothing elsewhere,
        and nothing while lines wait behind the throttle: typing is about now, and
        queued it would grow the queue without bound and hold the user's messages.
        """
        if self.tags_on and not self.conn._pending:
            self.conn.send_lines([f"@{encode_tags(tags)} TAGMSG {target}"])

    def wire_lines(self, message: OutboundMessage, target: str) -> list[str]:
        """
        The IRC lines of a message from the user. A correction: ``s/old/new/`` for a
        short edit of a message remembered, else ``* `` and the whole corrected text.
        A reply: ``+draft/reply`` where the server takes client tags and the message
        answered has a msgid, else a short quote; in a room after ``nick: ``. A
        reaction: ``+draft/react`` TAGMSGs where it can, else ``Reacted ❤ to “…”``.
        """
        body = message.body or ""
        tags: dict[str, str] = {}
        author = text.clean_name(message.ref_author) if message.kind == "groupchat" and message.ref_author else None
        if author and author == text.clean_name(self.nick):
            author = None
        if message.reaction_to:
            if self.tags_on and message.ref:
                return [f"@{encode_tags({'+draft/react': r, '+draft/reply': message.ref})} TAGMSG {target}"
                        for r in message.reactions]
            body = fallback.reaction_text(message.reactions, message.ref_body)
            body = f"{author}: {body}" if author else body
        elif message.correction_of:
            body = fallback.short_edit(message.ref_body, body) or f"* {body}"
        elif message.reply_to:
            if self.tags_on and message.ref:
                tags["+draft/reply"] = message.ref
            elif message.ref_body:
                body = f"“{fallback.quote(message.ref_body)}” {body}"
            body = f"{author}: {body}" if author else body
        body, ctcp = _ctcp(body)
        lines = text.message_lines("PRIVMSG", target, body, self.nick, ctcp)
        if tags and lines:
            lines[0] = f"@{encode_tags(tags)} {lines[0]}"
        return lines

    # -- LIST -------------------------------------------------------------------

    @defer.inlineCallbacks
    def list_channels(self):
        now = self.context.clock.seconds()
        if self._list_cache and now - self._list_cache[0] < LIST_CACHE:
            return self._list_cache[1]
        conn = yield self.ready()
        d = defer.Deferred()
        first = not self._list_waiters
        self._list_waiters.append(d)
        if first:
            self._listing, self._list_cut = [], False
            conn.send_lines(["LIST"])
        try:
            channels = yield d.addTimeout(self.adapter.config["list_timeout"], self.context.clock)
        except defer.TimeoutError:
            # The server never ended the list: stop collecting, for every waiter.
            self._listing, waiters, self._list_waiters = None, self._list_waiters, []
            for other in waiters:
                if other is not d and not other.called:
                    other.errback(TemporaryFailure(f"{self.server} did not finish its channel list"))
            raise TemporaryFailure(f"{self.server} did not finish its channel list within "
                                   f"{self.adapter.config['list_timeout']:g} s")
        finally:
            if not self.rooms:
                self.close("Listed channels")     # opened only to list: do not linger
        return channels

    def on_list_entry(self, channel: str, users: int, topic: str) -> None:
        if self._listing is None:
            return
        if len(self._listing) >= self.adapter.config["max_list"]:
            self._list_cut = True
            self.on_list_end()                    # answer now with what came; later entries are dropped
            return
        name = text.clean_name(channel)
        if name != channel or not name.startswith(("#", "&", "+", "!")):
            return                                # no JID can address it: it could not be joined
        self._listing.append((channel, users, text.clean(topic, 300)))

    def on_list_end(self) -> None:
        if self._listing is None:
            return
        found = [(self.room_address(c), f"{c} ({n}): {t}" if t else f"{c} ({n})") for c, n, t in self._listing]
        if self._list_cut:
            limit = self.adapter.config["max_list"]
            found.append((self.server, f"{self.server} has more channels: the list is cut at {limit}"))
        self._listing = None
        self._list_cache = (self.context.clock.seconds(), found)
        if self._list_drop is not None and self._list_drop.active():
            self._list_drop.cancel()
        self._list_drop = self.context.clock.callLater(LIST_CACHE, self._forget_list)
        waiters, self._list_waiters = self._list_waiters, []
        for d in waiters:
            d.callback(found)

    def _forget_list(self) -> None:
        self._list_drop = self._list_cache = None

    def on_cannot_send(self, channel: str, why: str) -> None:
        """The channel refused a line of ours (404): said in the room, or the user's message is lost unseen."""
        room = self._room(channel)
        if room is not None and room.ready:
            self._event(room, "message", body=f"{self.server} did not pass your message on to {room.channel}: "
                                              f"{text.clean(why, 200) or 'refused'}")

    def _note_written(self, target: str) -> None:
        written = self._written_to
        if written is None:
            written = self._written_to = {}
        written.pop(target.lower(), None)
        written[target.lower()] = self.context.clock.seconds()
        while len(written) > NOSUCHNICK_TARGETS:
            del written[next(iter(written))]

    def on_no_such_nick(self, nick: str, why: str) -> None:
        """
        401 for a nick a private message was just written to: the message went
        nowhere, and the user hears it from that nick's JID (once), rather than
        never. A 401 about anything else (a WHOIS, a moderation change) is not this.
        """
        written = self._written_to
        when = written.pop(nick.lower(), None) if written else None
        if when is None or self.context.clock.seconds() - when > NOSUCHNICK_WINDOW:
            return
        self.context.deliver(InboundMessage(
            component=self.context.component, user=self.user, sender=f"{text.clean_name(nick).lower()}%{self.server}",
            body=f"[not delivered] {self.server}: {text.clean(why, 200) or 'no such nick'}")).addErrback(
            lambda f: log.failure("401 for {nick} not told", f, nick=nick))

    def on_join_refused(self, channel: str, condition: str, why: str) -> None:
        room = self.rooms.pop(channel.lower(), None)
        if room is not None:
            self._event(room, "join-error", nick=self.nick, condition=condition, reason=f"{self.server}: {why}")

    # -- sending --------------------------------------------------------------------------

    def raw_command(self, lines: list[str]) -> defer.Deferred:
        """The user's own commands (a message to the server's JID); the answers come back from it."""
        if self.replies is None:
            self.replies = ServerReplies(self)
        d = self.send_raw(lines)
        d.addCallback(lambda _: self.replies.command_sent())
        return d

    def status(self) -> tuple[bool, str]:
        """(connected, text) of this connection, for the presence of the server's JID."""
        if self.conn is not None:
            return True, f"connected to {self.server} as {text.clean_name(self.nick)}"
        if self._trouble is not None:
            return False, f"not connected to {self.server}: {self._trouble[1]}"
        return False, f"connecting to {self.server}"

    def _tell_status(self) -> None:
        self.context.contact_status(self.user, self.server, *self.status())

    @property
    def greeted(self) -> bool:
        return self.conn is not None and self.conn.greeted

    def greeting_over(self) -> None:
        """The server's welcome burst (up to the end of its MOTD) is over: what follows answers commands."""
        if self.replies is not None:
            self.replies.greeting_over()

    def server_reply(self, command: str, params: list[str]) -> None:
        self.verdicts.numeric(command, params)
        if self.replies is not None:
            self.replies.reply(command, params)

    def server_notice(self, body: str) -> None:
        if self.replies is None:
            self.replies = ServerReplies(self)
        self.replies.notice(body)

    def send_raw(self, lines: list[str]) -> defer.Deferred:
        """The user's own lines (raw commands, TOPIC): within the send queue's bound, or QueueFull."""
        def queue(conn):
            conn.send_message(lines).done.addErrback(lambda f: None)    # lost with the connection: as before

        if self.conn is not None:
            return defer.maybeDeferred(queue, self.conn)
        return self.ready().addCallback(queue)

    def send(self, target: str, message: OutboundMessage, reflect_room: Room | None = None) -> defer.Deferred:
        """
        A room message (connecting first if needed). Room traffic is about now and
        not in the outbox: it fires with the number of IRC lines once they are
        queued, and fails only if the queue is full.
        """
        if self.conn is None:
            return self.ready().addCallback(lambda _: self.send(target, message, reflect_room))
        lines = self.wire_lines(message, target)
        if not lines:
            return defer.succeed(0)
        try:
            self.conn.send_message(lines).done.addErrback(lambda f: None)   # lost with the connection: as before
        except GatewayError as e:                     # queue full, or a message longer than the queue
            return defer.fail(e)
        if not (message.correction_of or message.reaction_to):
            self._await_echo(message, target, lines)
        if reflect_room is not None:
            # XEP-0045: the room reflects the sender's own message (as they wrote it) to every joined resource.
            self._event(reflect_room, "message", nick=self.nick, body=message.body, message_id=message.xmpp_id,
                        correction_of=message.correction_of, reply_to=message.reply_to,
                        ref_author=message.ref_author, reaction_to=message.reaction_to,
                        reactions=list(message.reactions), origin_id=message.origin_id)
        return defer.succeed(len(lines))

    def send_now(self, target: str, message: OutboundMessage, reflect_room: Room) -> int:
        """
        ``send`` on a connected session, without Deferreds (the hot path of room
        lines): the number of IRC lines queued, or the GatewayError ``send``
        fails with raised. The same lines, the same echo bookkeeping and the
        same reflection, in the same order.
        """
        lines = self.wire_lines(message, target)
        if not lines:
            return 0
        self.conn.send_room_lines(lines)              # raises QueueFull or PermanentFailure, as send_message
        if not (message.correction_of or message.reaction_to):
            self._await_echo(message, target, lines)
        self._reflect(reflect_room, message)
        return len(lines)

    def _reflect(self, room: Room, message: OutboundMessage) -> None:
        """
        XEP-0045: the room reflects the sender's own message (as they wrote it) to every joined resource.
        What ``_event(room, "message", nick=self.nick, body=message.body, ...)`` makes, built directly.
        """
        nick, body = self.nick, message.body
        if nick:
            nick = _own_nick(nick) if len(nick) <= 64 else text.clean_name(nick)
        self.context.room_event(RoomEvent(
            component=self.context.component, user=self.user, resources=list(room.resources),
            room=self.room_address(room.channel), kind="message", nick=nick,
            body=text.clean(body) if body else body, message_id=message.xmpp_id,
            correction_of=message.correction_of, reply_to=message.reply_to, ref_author=message.ref_author,
            reaction_to=message.reaction_to, reactions=list(message.reactions), origin_id=message.origin_id))

    def send_private(self, message: OutboundMessage, target: str) -> defer.Deferred:
        """
        A private message from the outbox: fires with the number of IRC lines once
        the last is written to the socket, so the outbox forgets nothing the
        connection still holds. It fails with TemporaryFailure (the outbox retries)
        while an older message to ``target`` waits for its own retry, when the queue
        is full, or when the connection goes before every line is written; then
        ``message.progress["irc_lines"]`` counts the lines already written, stored
        before failing, and the retry starts after them.
        """
        key = (self.user, self.server, target.lower())
        backlog = self.adapter.backlog

        def failed(failure):
            if failure.check(LostOwnership):
                backlog.settle(key, message)          # another process sends it now
            elif not failure.check(PermanentFailure):
                backlog.owe(key, message)
            return failure

        return self._write_private(message, target, key).addErrback(failed)

    def _write_private(self, message: OutboundMessage, target: str, key: tuple[str, str, str]) -> defer.Deferred:
        if self.conn is None:
            return self.ready().addCallback(lambda _: self._write_private(message, target, key))
        backlog = self.adapter.backlog
        if backlog.overtakes(key, message):
            return defer.fail(TemporaryFailure(f"an older message to {target} is waiting to be resent"))
        lines = self.wire_lines(message, target)
        done = _lines_written(message, len(lines))
        if done == len(lines):
            backlog.settle(key, message)
            return defer.succeed(len(lines))
        try:
            out = self.conn.send_message(lines[done:], lambda o: self._progressed(message, done, o))
        except GatewayError as e:                     # queue full, or a message longer than the queue
            return defer.fail(e)
        backlog.settle(key, message)                  # in line on the socket: later messages may follow it
        self._note_written(target)
        if done == 0 and not (message.correction_of or message.reaction_to):
            self._await_echo(message, target, lines)
        return out.done.addCallbacks(lambda _: len(lines), lambda f: self._interrupted(f, message, done, out))

    def _progressed(self, message: OutboundMessage, done: int, out: Outgoing) -> None:
        """Part of a message is out: make that durable, so a crash now does not repeat those lines."""
        message.progress["irc_lines"] = done + out.written

        def failed(failure):
            if failure.check(LostOwnership):
                out.abandon(failure.value)            # the outbox must stop: the rest is not ours to send
            else:
                log.failure("progress of {id} not stored", failure, id=message.id)

        self.context.checkpoint(message).addErrback(failed)

    @defer.inlineCallbacks
    def _interrupted(self, failure, message: OutboundMessage, done: int, out: Outgoing):
        if out.written and not failure.check(LostOwnership):
            message.progress["irc_lines"] = done + out.written
            try:
                # Before the outbox releases the row (which ends our claim), or the count is lost.
                yield self.context.checkpoint(message)
            except LostOwnership:
                raise
            except Exception:
                log.failure("progress of {id} not stored; a retry may repeat {n} line(s)", id=message.id,
                            n=done + out.written)
        failure.raiseException()


#: text.clean_name of the user's own nick, on every reflected line: a pure function, remembered
#: (for nicks of at most 64 characters, at most 1,024 of them).
_own_nick = functools.lru_cache(maxsize=1024)(text.clean_name)


def _borrow(room: Room, theirs: Room, nick: str) -> bool:
    found = theirs.hosts.get(nick)
    if found is not None:
        room.hosts[nick] = members.userhost(found)
    return found is not None


def _keepable(nick: str) -> bool:
    """
    Whether an occupant's name is kept: ``max_names`` counts names, so without a
    bound on each a server could make one join hold ``max_names`` names of 8 KB
    each. No JID resource is made of more than text.NAME_LIMIT characters of a
    name, and real IRC nicks are far shorter: a longer one is not kept.
    """
    return 0 < len(nick) <= text.NAME_LIMIT


def _ctcp(body: str) -> tuple[str, str | None]:
    return (body[4:], "ACTION") if body.startswith("/me ") else (body, None)


def _lines_written(message: OutboundMessage, total: int) -> int:
    """Lines an earlier attempt wrote (``progress["irc_lines"]``), if the record is sane."""
    done = message.progress.get("irc_lines", 0)
    return done if isinstance(done, int) and not isinstance(done, bool) and 0 <= done <= total else 0
