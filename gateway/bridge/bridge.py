"""
One Bridge per component: the adapter's context, the XMPP side's single entry
point into the network, and the owner of registrations, limits and the outbox.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Iterable

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from gateway import metrics
from gateway.bridge import conversations
from gateway.bridge.conversations import Conversations
from gateway.bridge.notices import CORE_SETTINGS, SplitNotices
from gateway.bridge.outbox import Outbox
from gateway.bridge.ratelimit import TokenBuckets
from gateway.bridge.archive import RoomArchive
from gateway.interfaces import NOT_NOW, IAdapterContext, ICorrections, IGroupChat, IHostsRooms, ISendNow, ITyping
from gateway.model import (DeliveryReport, Field, GatewayError, HistoryRequest, InboundMessage, OutboundMessage,
                           PolicyViolation, Registration, RegistrationError, RoomEvent, SecretsUndecryptable,
                           SendResult, new_id)
from gateway.registry import RegistrationConflict

log = Logger(namespace="gateway.bridge")

#: Bridge.known_registration's answer when the cache does not know.
UNKNOWN = object()


class _Disconnected:
    """Stand-in output until the XMPP side attaches: holds everything inbound."""

    connected = False
    holds_room_events = False

    def send_message(self, message):
        raise RuntimeError("no XMPP output attached")

    send_error = send_receipt = send_room_event = send_message

    def room_event_size(self, event):
        return len(event.body or "") + len(event.nick or "")

    def flush_room_events(self):
        return 0

    def room_backlog(self):
        return 0

    def barrier(self):
        return defer.fail(RuntimeError("no XMPP output attached"))


def coerce_field(field: Field, value: Any) -> Any:
    """Form values arrive as strings or lists; give the adapter the field's own type."""
    if field.type == "boolean":
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("1", "true")
    if field.type in ("text-multi", "list-multi", "jid-multi"):
        if isinstance(value, str):
            return [v for v in value.split("\n")]
        return list(value or [])
    if isinstance(value, list):
        return "\n".join(value)
    return "" if value is None else str(value)


@implementer(IAdapterContext)
class Bridge(service.MultiService):
    #: How long a cached registration is trusted when several processes share the registry.
    CACHE_TTL = 30.0
    #: Room events kept in memory while the component stream is down.
    ROOM_EVENT_HOLD = 50000

    def __init__(self, component: str, adapter_class: type, adapter_options: dict, registry, clock,
                 outbox_settings: dict, limits: dict, files=None, token_key: bytes = b"", archive: bool = True,
                 fetcher=None):
        super().__init__()
        self.component = component
        #: A key for adapters' keyed hashes (the IRC ident token), derived from the registry's
        #: secret_key, so no adapter needs the key that seals secrets (IAdapterContext).
        self.token_key = token_key
        self.registry = registry
        self.clock = clock
        #: Where adapters store files they offer users as links (gateway.web.files.FileStore).
        self.files = files
        #: Bounded HTTP for files users send by URL (gateway.web.fetch.Fetcher).
        self.fetcher = fetcher
        #: The XMPP side's XEP-0363 uploads (an IFileUpload), once attached.
        self.uploads = None
        self.output: Any = _Disconnected()
        self.adapter = adapter_class(adapter_options, self)
        #: ISendNow, asked once (the hot path would ask for every room message).
        self._sends_now = ISendNow.providedBy(self.adapter)
        if service.IService.providedBy(self.adapter):
            self.adapter.setServiceParent(self)
        self.set_limits(limits)
        self.outbox = Outbox(registry, component, self.adapter, lambda: self.output, self._sending_registration,
                             clock, outbox_settings, on_sent=self._sent, known_registration=self._known_for_sending)
        self._cache: dict[str, tuple[float, Registration | None]] = {}
        #: Registrations by foreign id (webhooks, SMTP recipients): see registration_by_foreign_id.
        self._by_foreign: dict[str, tuple[float, Registration]] = {}
        self._verdicts: task.LoopingCall | None = None
        self._held_room_events: deque[RoomEvent] = deque(maxlen=self.ROOM_EVENT_HOLD)
        #: Set at an orderly stop once occupants were told the rooms are going away.
        self._rooms_closed = False
        self._warned_room_hold = False
        self._room_events_dropped = metrics.ROOM_EVENTS_DROPPED.labels(component)
        self._sent_direct = metrics.tally(metrics.MESSAGES.labels(component, "out"))   # read at scrape time
        self._secrets_unreadable = metrics.SECRETS_UNREADABLE.labels(component)
        self.split_notices = SplitNotices(self)
        #: The room archive (MAM, history on join) of a group-chat network; None when turned off.
        self.archive = RoomArchive(self) if archive and IGroupChat.providedBy(self.adapter) else None
        #: Messages relayed, per conversation: what corrections, replies and reactions refer to.
        self.conversations = Conversations(self.adapter)

    def startService(self):
        super().startService()
        self.outbox.start()
        self._verdicts = task.LoopingCall(self._overdue)
        self._verdicts.clock = self.clock
        self._verdicts.start(5 * self.outbox.poll_interval, now=False)

    def stopService(self):
        self.outbox.stop()
        if self._verdicts is not None and self._verdicts.running:
            self._verdicts.stop()
        return super().stopService()

    # -- the XMPP side attaches here ------------------------------------------

    def attach(self, output) -> None:
        self.output = output

    def attach_uploads(self, uploads) -> None:
        """The XMPP side's IFileUpload: files from the network go to the user's own server when it can."""
        self.uploads = uploads

    def stream_up(self) -> defer.Deferred:
        metrics.STREAM_UP.labels(self.component).set(1)
        held, self._held_room_events = self._held_room_events, deque(maxlen=self.ROOM_EVENT_HOLD)
        self._warned_room_hold = False
        for event in held:
            self._send_room_event(event)
        return self.outbox.flush_inbound().addErrback(lambda f: log.failure("flushing held messages failed", f))

    def _send_room_event(self, event: RoomEvent) -> None:
        """One event that cannot become a stanza is logged and dropped; it never takes the others with it."""
        try:
            self.output.send_room_event(event)
        except Exception:
            self._room_events_dropped.inc()
            log.failure("room event {kind} in {room} for {user} dropped", kind=event.kind, room=event.room,
                        user=event.user)

    def set_limits(self, limits: dict) -> None:
        self.limiter = TokenBuckets(limits["rate"], limits["burst"])
        #: Messages of a room's archive a join gets when neither the client nor the user's setting says.
        self.room_history = limits.get("room_history", 20)
        self.rate_text = (f"rate limit exceeded: at most {limits['rate']:g} messages per second "
                          f"(bursts of {limits['burst']})")

    def rooms_closing(self) -> int:
        """
        Every occupant of every room this process hosts hears it was removed
        because the service is shutting down. Said
        whether or not other gateway processes live: a room's IRC connection
        belongs to this process, so the room ends with it. Room events after
        this are dropped: the user was told they left. Returns how many
        presences were sent.
        """
        if not IHostsRooms.providedBy(self.adapter) or not self.output.connected:
            return 0
        sent = 0
        for occupancy in list(self.adapter.occupancy()):
            self._send_room_event(RoomEvent(component=self.component, user=occupancy.user,
                                            resources=list(occupancy.resources), room=occupancy.room,
                                            kind="presence", nick=occupancy.nick, unavailable=True,
                                            role="none", own=True, service_stopping=True))
            sent += len(occupancy.resources)
        self._rooms_closed = True
        self.output.flush_room_events()      # the paced queue, written before the stream closes
        return sent

    def stream_down(self) -> None:
        metrics.STREAM_UP.labels(self.component).set(0)

    # -- IAdapterContext --------------------------------------------------

    def deliver(self, message: InboundMessage) -> defer.Deferred:
        message.component = self.component
        self.conversations.inbound(message)
        return self.outbox.deliver(message)

    def deliver_all(self, messages: list[InboundMessage],
                    threads: Iterable[tuple[str, str, str, str | None]] = ()) -> defer.Deferred:
        for message in messages:
            message.component = self.component
            self.conversations.inbound(message)
        return self.outbox.deliver_all(messages, [(self.component, *record) for record in threads])

    def offer_file(self, user: str, data: bytes, name: str | None, content_type: str | None) -> defer.Deferred:
        """
        The user's server (XEP-0363) when it takes the file, else the gateway's
        own /files/: a failed upload is logged and the file served here, so a
        file from the network always reaches the user (IAdapterContext).
        """
        def local(_=None):
            return self.files.put(data, name, content_type)

        if self.uploads is None:
            return local()

        def uploaded(url):
            return url if url else local()

        def failed(failure):
            log.warn("upload of {name!r} for {user} to the user's server failed ({why}); served from /files/",
                     name=name, user=user, why=failure.getErrorMessage())
            return local()

        return defer.maybeDeferred(self.uploads.upload, user, data, name, content_type).addCallbacks(
            uploaded, failed)

    def rehost(self, user: str, url: str) -> defer.Deferred:
        """
        A network's file URL (MMS media at the provider) moved to the user's
        own server when it has an upload service: fetched within the
        operator's limits, then uploaded, all within the upload timeout (the
        network's webhook waits for it). Anything that fails keeps the
        network's URL, which the user could open before (IAdapterContext).
        """
        if self.uploads is None or self.fetcher is None:
            return defer.succeed(url)

        def kept(failure):
            log.info("{url} for {user} not moved to the user's server ({why}); the network's URL is sent",
                     url=url, user=user, why=failure.getErrorMessage() or failure.type.__name__)
            return url

        d = self._rehost(user, url).addTimeout(self.uploads.timeout, self.clock)
        return d.addCallbacks(lambda moved: moved or url, kept)

    @defer.inlineCallbacks
    def _rehost(self, user: str, url: str):
        if not (yield self.uploads.available(user)):
            return None
        fetched = yield self.fetcher.fetch(url)
        return (yield self.uploads.upload(user, fetched.data, fetched.name, fetched.content_type))

    def fetch(self, url: str, user: str | None = None, max_size: int | None = None) -> defer.Deferred:
        """
        The file at a URL a user sent, within the operator's limits
        (IAdapterContext). A URL of the upload service of the user's own
        server (one of the operator's, see gateway/xmpp/upload.py) may be on a
        private address: that server is the operator's, not the sender's choice.
        """
        if self.fetcher is None:
            return defer.fail(GatewayError("this gateway does not fetch files", "feature-not-implemented"))
        if self.uploads is None or user is None:
            return self.fetcher.fetch(url, max_size)
        d = self.uploads.is_upload_url(user, url)
        return d.addCallback(lambda own: self.fetcher.fetch(url, max_size, allow_private=True if own else None))

    def checkpoint(self, message: OutboundMessage) -> defer.Deferred:
        return self.outbox.checkpoint(message)

    def contact_status(self, user: str, address: str, available: bool, status: str) -> None:
        if self.output.connected:
            self.output.send_presence(user, address, available, status)

    def message_ref(self, user: str, address: str, xmpp_id: str, ref: str) -> None:
        self.conversations.learn(user, address, xmpp_id, ref)

    def typing(self, user: str, address: str, state: str) -> None:
        if self.output.connected:
            self.output.send_message(InboundMessage(component=self.component, user=user, sender=address,
                                                    chat_state=state))

    def room_event(self, event: RoomEvent) -> None:
        archive = self.archive
        self.conversations.resolve_room_event(event)   # a reaction said in words gets a body: archived too
        if archive is not None:
            archive.record(event)            # also with no resource joined: a persistent room is the user's
            if event.kind == "message" and event.body is None and not event.archived:
                event.stanza_id = None       # a reaction or typing is not kept: no id a MAM query would miss
        if archive is None and event.kind == "message" and event.nick and not event.stanza_id and not event.archived:
            # With the archive off a line still gets an id of its own, so clients can answer or react to it.
            # With it on, only what it keeps has one: a client's MAM catch-up "after" an id must find it.
            event.stanza_id = new_id()
        self.conversations.room_event(event)
        if not event.resources or self._rooms_closed:
            return
        if archive is not None:
            event = archive.filter(event)
            if event is None:
                return
        self._route_room_event(event)

    def room_backlog(self) -> int:
        return len(self._held_room_events) + self.output.room_backlog()

    def _route_room_event(self, event: RoomEvent) -> None:
        if self._rooms_closed:
            return
        if self.output.connected or self.output.holds_room_events:
            # An output with a paced queue keeps what comes while the stream is down, merged
            # and bounded by its own rules (lines kept before presences): see gateway/xmpp/pacing.py.
            self._send_room_event(event)
            return
        # Held in memory while the stream is down (a reconnect takes seconds):
        # a user whose self-presence or a line was produced meanwhile still gets
        # it. Bounded: past the limit the oldest go, counted and logged.
        if len(self._held_room_events) == self._held_room_events.maxlen:
            self._room_events_dropped.inc()
            if not self._warned_room_hold:
                self._warned_room_hold = True
                log.warn("{component}: more than {n} room events while the stream is down; dropping the oldest",
                         component=self.component, n=self._held_room_events.maxlen)
        self._held_room_events.append(event)

    # -- group chats ------------------------------------------------------

    def ensure_registration(self, jid: str) -> defer.Deferred:
        """The user's registration; for networks needing none, created on first use."""

        def create_if_needed(reg):
            if reg is not None and reg.secrets_unreadable:
                self._unreadable(reg)
            if reg is not None or not self.adapter.auto_register:
                return reg
            reg = Registration(self.component, jid, subscribed=False)
            self._forget(jid)
            return self.registry.put_registration(reg).addCallback(lambda _: reg)

        return self.registration(jid).addCallback(create_if_needed)

    @defer.inlineCallbacks
    def join_room(self, user: str, resource: str, room: str, nick: str, password: str | None = None,
                  history: HistoryRequest | None = None):
        reg = yield self.ensure_registration(user)
        if reg is None:
            raise RegistrationError(f"register with {self.component} first", "registration-required")
        if self.archive is not None and self.adapter.joined_nick(user, resource, room) is None:
            self.archive.expect_join(user, resource, room, reg, history)   # a nick change gets none
        try:
            yield defer.maybeDeferred(self.adapter.join, reg, resource, room, nick, password)
        except Exception:
            if self.archive is not None:
                self.archive.forget_join(user, resource, room)
            raise

    def leave_room(self, user: str, resource: str, room: str) -> defer.Deferred:
        return defer.maybeDeferred(self.adapter.leave, user, resource, room)

    def confirmed(self, foreign_id: str) -> defer.Deferred:
        return self.registry.confirm_message(self.component, foreign_id)

    @defer.inlineCallbacks
    def _overdue(self):
        """Messages the network took without confirming, whose verdict never came: tell their senders."""
        try:
            rows = yield self.registry.overdue_messages(self.component)
        except Exception:
            log.failure("looking for unconfirmed messages failed")
            return
        for jid, xmpp_id, contact, resource in rows:
            log.info("{id} from {jid} to {contact}: no confirmation from the network; telling the sender",
                     id=xmpp_id, jid=jid, contact=contact)
            try:
                self.output.send_error(
                    OutboundMessage(component=self.component, user=jid, recipient=contact, xmpp_id=xmpp_id,
                                    resource=resource),
                    GatewayError("the network never confirmed that it took this message: it may not have been "
                                 "delivered", "remote-server-timeout", "wait"))
            except Exception:
                # One row that cannot become a stanza must not stop the others, nor the watchdog.
                log.failure("telling {jid} about unconfirmed {id} failed", jid=jid, id=xmpp_id)

    @defer.inlineCallbacks
    def report(self, report: DeliveryReport):
        """
        A verdict on a message sent earlier. A report that names its user (a
        DSN mailed to a user's address) counts only for that user's message:
        anyone can mail a forged bounce naming another user's Message-ID, and
        it must not fail their message. Reports without a user come from a
        channel the adapter authenticated (signed SMS status callbacks).
        """
        if not report.user:
            yield self.registry.confirm_message(self.component, report.foreign_id)
        found = None
        for wait in (0, 0.2, 0.5, 1.0):
            # A fast network may report before the send's id mapping is stored.
            if wait:
                yield task.deferLater(self.clock, wait, lambda: None)
            found = yield self.registry.message_by_foreign_id(self.component, report.foreign_id,
                                                              report.user or None)
            if found is not None:
                break
        if found is None:
            log.info("delivery report for unknown message {fid}{whose}", fid=report.foreign_id,
                     whose=f" of {report.user}" if report.user else "")
            return
        jid, xmpp_id, contact, resource, receipt = found
        if report.delivered:
            if receipt:
                self.output.send_receipt(jid, resource, contact, xmpp_id)
        else:
            failed = OutboundMessage(component=self.component, user=jid, recipient=contact,
                                     xmpp_id=xmpp_id, resource=resource)
            self.output.send_error(failed, GatewayError(report.text or "delivery failed",
                                                        report.condition or "recipient-unavailable"))

    def known_registration(self, jid: str) -> Registration | None | object:
        """
        The user's registration when the cache can answer at once, with no
        Deferred (the hot path asks for every message); ``UNKNOWN`` when only
        ensure_registration can tell.
        """
        cached = self._cache.get(jid)
        if not self._fresh(cached, self.registry.shared):
            return UNKNOWN
        reg = cached[1]
        if reg is None or reg.secrets_unreadable:
            return UNKNOWN                 # ensure_registration creates it, or tells the user why not
        return reg

    def _fresh(self, cached: tuple[float, Any] | None, expires: bool) -> bool:
        """Whether a cache entry (when stored, value) may answer: ``expires``, only for CACHE_TTL."""
        return cached is not None and (not expires or time.monotonic() - cached[0] < self.CACHE_TTL)

    def registration(self, jid: str) -> defer.Deferred:
        cached = self._cache.get(jid)
        if self._fresh(cached, self.registry.shared):
            return defer.succeed(cached[1])

        def remember(reg):
            if len(self._cache) > 50000:
                self._cache.clear()
            self._cache[jid] = (time.monotonic(), reg)
            return reg

        return self.registry.get_registration(self.component, jid).addCallback(remember)

    def registration_by_foreign_id(self, foreign_id: str) -> defer.Deferred:
        """
        The registration holding ``foreign_id``, cached like ``registration``:
        every inbound webhook and SMTP recipient asks, and an uncached query
        waits in the registry's one SQLite thread behind the group commit (an
        fsync) of the messages before it, so each webhook or mail paid one
        more commit's time before its own. Only registrations found are kept
        (an unknown address is asked again: a registration made by another
        process is seen at once), every registration change in this process
        empties the cache, and entries older than CACHE_TTL are asked again
        (the registry file may be changed by another process, e.g. the CLI).
        """
        cached = self._by_foreign.get(foreign_id)
        if self._fresh(cached, True):
            return defer.succeed(cached[1])

        def remember(reg):
            if reg is not None:
                if len(self._by_foreign) > 50000:
                    self._by_foreign.clear()
                self._by_foreign[foreign_id] = (time.monotonic(), reg)
            return reg

        return self.registry.registration_by_foreign_id(self.component, foreign_id).addCallback(remember)

    def _forget(self, jid: str) -> None:
        """After a change to ``jid``'s registration: neither cache may answer with the old one."""
        self._cache.pop(jid, None)
        self._by_foreign.clear()     # rare (a registration change), and the old foreign id is not known here

    def _known_for_sending(self, jid: str) -> Registration | None:
        """_sending_registration's answer when the cache has it and it needs no check (else None): no Deferred."""
        reg = self.known_registration(jid)
        return None if reg is UNKNOWN else reg

    def _sending_registration(self, jid: str) -> defer.Deferred:
        """For the outbox: a registration whose secrets no key opens fails the send with SecretsUndecryptable."""

        def check(reg):
            if reg is not None and reg.secrets_unreadable:
                self._unreadable(reg)
            return reg

        return self.registration(jid).addCallback(check)

    def _unreadable(self, reg: Registration):
        """
        Refuse to act for a user whose secrets cannot be opened: sending
        without them could use the operator's credentials in their place, or
        log in without their password. The user is told; the operator gets
        the metric and a log line (never the token).
        """
        self._secrets_unreadable.inc()
        log.warn("{jid}'s stored secrets for {component} cannot be decrypted with the configured keys "
                 "(registry.secret_key, registry.old_secret_keys): refused; the user was told to register again",
                 jid=reg.jid, component=self.component)
        raise SecretsUndecryptable()

    def counter(self, jid: str, name: str, period: str) -> defer.Deferred:
        return self.registry.counter(self.component, jid, name, period)

    def add_to_counter(self, jid: str, name: str, period: str, amount: int = 1) -> defer.Deferred:
        return self.registry.add_to_counter(self.component, jid, name, period, amount)

    def add_to_thread(self, jid: str, thread: str, message_id: str, subject: str | None = None) -> defer.Deferred:
        return self.registry.add_to_thread(self.component, jid, thread, message_id, subject)

    def thread_messages(self, jid: str, thread: str) -> defer.Deferred:
        return self.registry.thread_messages(self.component, jid, thread)

    def thread_of(self, jid: str, message_ids: list[str]) -> defer.Deferred:
        return self.registry.thread_of(self.component, jid, message_ids)

    # -- registration (XEP-0077, XEP-0050) ------------------------------------

    def _coerce(self, fields: list[Field], values: dict[str, Any]) -> dict[str, Any]:
        known = {f.var: f for f in fields}
        return {k: coerce_field(known[k], v) for k, v in values.items() if k in known}

    @defer.inlineCallbacks
    def register(self, jid: str, values: dict[str, Any]):
        """Create or change ``jid``'s registration; an empty secret keeps the stored one."""
        fields = list(self.adapter.registration_fields)
        values = self._coerce(fields, values)
        current = yield self.registration(jid)
        for f in fields:
            if f.secret and current is not None and not values.get(f.var) and f.var in current.secrets:
                values[f.var] = current.secrets[f.var]
        missing = [f.label for f in fields if f.required and values.get(f.var) in (None, "", [])]
        if missing:
            raise RegistrationError("missing required field(s): " + ", ".join(missing))
        foreign_id, settings, secrets = yield defer.maybeDeferred(
            self.adapter.validate_registration, jid, values, current)
        reg = Registration(self.component, jid, foreign_id, dict(settings), dict(secrets))
        if current is not None:
            reg.settings = {**current.settings, **reg.settings}
            reg.created_at = current.created_at
            reg.subscribed = current.subscribed
        try:
            yield self.registry.put_registration(reg)
        except RegistrationConflict:
            raise RegistrationError(f"{foreign_id} is already registered to another user", "conflict")
        self._forget(jid)
        yield defer.maybeDeferred(self.adapter.user_registered, reg)
        log.info("{jid} registered with {component}", jid=jid, component=self.component)
        return reg, current is None

    @defer.inlineCallbacks
    def unregister(self, jid: str):
        reg = yield self.registration(jid)
        found = yield self.registry.delete_registration(self.component, jid)
        self._forget(jid)
        if reg is not None:
            yield defer.maybeDeferred(self.adapter.user_unregistered, reg)
            log.info("{jid} unregistered from {component}", jid=jid, component=self.component)
        return found

    @property
    def settings_fields(self) -> list[Field]:
        """The ``settings`` form: the adapter's fields, then the gateway's own."""
        return [*self.adapter.settings_fields, *self._core_settings]

    @property
    def _core_settings(self) -> list[Field]:
        """The gateway's own settings: the correction setting only where the network has no corrections."""
        if ICorrections.providedBy(self.adapter):
            return CORE_SETTINGS
        return [*CORE_SETTINGS, *conversations.CORE_SETTINGS]

    @defer.inlineCallbacks
    def update_settings(self, jid: str, values: dict[str, Any]):
        reg = yield self.registration(jid)
        if reg is None:
            raise RegistrationError("you are not registered", "registration-required")
        values = self._coerce(self.settings_fields, values)
        core = {f.var: values.pop(f.var) for f in self._core_settings if f.var in values}
        settings = yield defer.maybeDeferred(self.adapter.validate_settings, reg, values) if values else {}
        reg.settings = {**reg.settings, **settings, **core}
        yield self.registry.put_registration(reg)
        self._forget(jid)
        yield defer.maybeDeferred(self.adapter.user_registered, reg)
        return reg

    @defer.inlineCallbacks
    def update_address_settings(self, jid: str, address: str, values: dict[str, Any]):
        """Per-address settings (an IRC server's nick, password...): the adapter merges, we store."""
        reg = yield self.ensure_registration(jid)
        if reg is None:
            raise RegistrationError("you are not registered", "registration-required")
        values = self._coerce(list(self.adapter.address_fields(address)), values)
        settings, secrets = yield defer.maybeDeferred(self.adapter.update_address, reg, address, values)
        reg.settings, reg.secrets = settings, secrets
        yield self.registry.put_registration(reg)
        self._forget(jid)
        return reg

    @defer.inlineCallbacks
    def set_subscribed(self, jid: str, subscribed: bool):
        yield self.registry.set_subscribed(self.component, jid, subscribed)
        self._forget(jid)

    # -- messages ---------------------------------------------------------

    def submit(self, message: OutboundMessage, registration: Registration | None = None) -> defer.Deferred:
        """
        Accept an outbound message into the outbox (rate limit first). What it
        refers to (a correction, reply or reaction) is looked up first, with the
        user's ``registration`` for their settings: a correction of someone
        else's message fails here (forbidden), and one the network cannot
        carry is accepted and not sent when the user said so.
        """
        if not self.limiter.allow(message.user):
            return defer.fail(PolicyViolation(self.rate_text))
        message.component = self.component
        try:
            prepared = self.conversations.prepare(message, registration)
        except GatewayError as e:
            return defer.fail(e)
        if prepared is None:
            return defer.succeed(None)
        return self.outbox.submit(prepared)

    def send_direct(self, message: OutboundMessage) -> defer.Deferred:
        """
        Send without the outbox: for group chat messages, which (like room events)
        are about now. A failure reaches the sender at once as a stanza error.
        """
        if not self.limiter.allow(message.user):
            return defer.fail(PolicyViolation(self.rate_text))
        message.component = self.component

        def send(reg):
            if reg is None:
                raise RegistrationError(f"register with {self.component} first", "registration-required")
            if self.conversations.prepare(message, reg) is None:
                return None
            return defer.maybeDeferred(self.adapter.send, message, reg)

        def sent(result):
            self._sent_direct.n += 1
            if isinstance(result, SendResult):
                self.split_notices.sent(message, result)
                self.conversations.sent(message, result.foreign_id)
            return result

        return self.ensure_registration(message.user).addCallback(send).addCallback(sent)

    #: Whether ``send_direct_now`` may take its synchronous path (False: always the Deferred chain of
    #: ``send_direct``, the reference the fast path is compared with in tests/unit/test_irc_send_fast.py).
    fast_direct = True

    def send_direct_now(self, message: OutboundMessage) -> Any:
        """
        ``send_direct`` without a Deferred when it can be done at once: the
        registration cached and an adapter that takes the message now
        (ISendNow). Returns what the Deferred would fire with, or raises what it
        would fail with; otherwise (and when ``fast_direct`` is off) the Deferred
        of ``send_direct``. Each step is the one ``send_direct`` takes, in its
        order, so the outcome is the same: a room line is sent for every
        message, and the fast path saves the seven callbacks of its chain.
        """
        reg = self.known_registration(message.user) if self.fast_direct else UNKNOWN
        if reg is UNKNOWN or not self._sends_now:
            return self.send_direct(message)
        if not self.limiter.allow(message.user):
            raise PolicyViolation(self.rate_text)
        message.component = self.component
        if self.conversations.prepare(message, reg) is None:
            result = None
        else:
            result = self.adapter.send_now(message, reg)
            if result is NOT_NOW:
                # The adapter's own Deferred path, after the same steps as send_direct's first callback.
                return defer.maybeDeferred(self.adapter.send, message, reg).addCallback(self._direct_sent, message)
        return self._direct_sent(result, message)

    def _direct_sent(self, result, message: OutboundMessage):
        """send_direct's last step (``sent``), shared by the fast path."""
        self._sent_direct.n += 1
        if type(result) is SendResult or isinstance(result, SendResult):
            if result.split_notice:                  # what split_notices.sent and conversations.sent
                self.split_notices.sent(message, result)     # look at first: no call for the usual line
            if result.foreign_id:
                self.conversations.sent(message, result.foreign_id)
        return result

    def chat_state(self, message: OutboundMessage) -> defer.Deferred:
        """Chat states are transient: passed on when the network has them (ITyping), never queued."""
        typing = ITyping.providedBy(self.adapter)
        if not typing and "chatstates" not in self.adapter.features:
            return defer.succeed(None)
        d = self.registration(message.user)
        d.addCallback(lambda reg: reg and (self.adapter.typing if typing else self.adapter.send)(message, reg))
        return d.addErrback(lambda f: log.debug("chat state not passed on: {f}", f=f.getErrorMessage()))

    def normalize_address(self, text: str) -> str:
        return self.adapter.normalize_address(text)

    def _sent(self, message: OutboundMessage, result: SendResult):
        self.split_notices.sent(message, result)
        self.conversations.sent(message, result.foreign_id)
        if message.xmpp_id and message.receipt_requested and result.delivered:
            self.output.send_receipt(message.user, message.resource, message.recipient, message.xmpp_id)
        elif message.xmpp_id and result.foreign_id and not result.delivered:
            verdict_by = time.time() + result.confirm_within if result.confirm_within else None
            return self.registry.put_message_id(self.component, message.user, message.xmpp_id,
                                                result.foreign_id, message.recipient, message.resource,
                                                message.receipt_requested, verdict_by)

    # -- admin ------------------------------------------------------------

    @defer.inlineCallbacks
    def stats(self):
        users = yield self.registry.count_registrations(self.component)
        depth = yield self.registry.queue_depth(self.component)
        metrics.REGISTRATIONS.labels(self.component).set(users)
        metrics.QUEUE_DEPTH.labels(self.component, "out").set(depth["out"])
        metrics.QUEUE_DEPTH.labels(self.component, "in").set(depth["in"])
        metrics.QUEUE_DEPTH.labels(self.component, "parked").set(depth["parked"])
        oldest = yield self.registry.queue_oldest(self.component)
        now = time.time()                      # the registry stamps rows with wall-clock time
        for direction in ("out", "in", "parked"):
            created = oldest.get(direction)
            metrics.QUEUE_OLDEST.labels(self.component, direction).set(max(0.0, now - created) if created else 0)
        return {"registered users": users, "outbox": depth["out"], "held inbound": depth["in"],
                "parked": depth["parked"], "stream up": bool(self.output.connected)}
