"""
The room archive, per user and room as biboumi keeps it: every message of a
group chat that reached a user's own connection, stored in the registry
(table ``room_archive``) through its group commit, for XEP-0313 queries on the
room's JID and for history on join (XEP-0045 ``<history/>``).

It is the gateway's, not the adapter's: every IGroupChat room gets it; an
adapter providing IRoomArchive only says the user's default history length.

Ids: each archived message gets a ``seq`` that orders the room (microseconds
since the epoch, never repeating in this process, and a random tail so two
processes sharing a PostgreSQL registry cannot collide), and is sent with the
XEP-0359 ``stanza-id`` it is archived under: the network's own id when it gave
one, else the ``seq``.

History on join: the archive is read while the adapter joins; occupants and
the user's own presence go out as they come, but the subject (the end of a
join, XEP-0045 §7.2.15) and everything after it wait for the history, which
goes out first. A join that fails or is left releases what waited.
"""

from __future__ import annotations

import dataclasses
import datetime
import random
import time

from twisted.internet import defer
from twisted.logger import Logger

from gateway.interfaces import IRoomArchive
from gateway.model import GatewayError, HistoryRequest, RoomEvent

log = Logger(namespace="gateway.archive")

#: Most messages one MAM page or one join's history may carry.
MAX_PAGE = 100
MAX_HISTORY = 1000
#: A join whose subject never comes stops holding the room's events after this long (seconds).
HOLD_TIMEOUT = 120.0
#: Joins awaiting their history at once, and events held for one of them, at most.
MAX_JOINS = 10000
MAX_HELD = 5000
#: Joins of one user awaiting their history at once: one user's many resources and rooms (on a
#: server that never ends a join) must not fill MAX_JOINS and leave every other user's joins without.
MAX_USER_JOINS = 100
#: History on join per user: HISTORY_BURST messages at once, then HISTORY_RATE a second. Joins are
#: not rate limited (a client joins its rooms at once), but each reads and sends up to MAX_HISTORY.
HISTORY_BURST = 5000
HISTORY_RATE = 500.0


#: 9999-12-31T23:59:59Z in microseconds: the last instant a datetime (and so a <delay/> stamp) can hold.
LAST_STAMP_US = 253402300799 * 1_000_000


def to_us(seconds: float) -> int:
    return int(round(seconds * 1_000_000))


def stamp_us(text: str) -> int:
    """
    An XEP-0082 date-time as integer microseconds since the epoch, exactly (a stamp
    the gateway sent names the same instant); ValueError when it is not one.
    """
    raw = (text or "").strip()
    if len(raw) > 40:
        raise ValueError("too long")
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    value = datetime.datetime.fromisoformat(raw)
    if value.tzinfo is None:
        raise ValueError("no time zone")
    delta = value - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclasses.dataclass
class _Join:
    started: float
    #: The history, once read (RoomEvents).
    history: list[RoomEvent] | None = None
    #: Events for the joining resource from its subject on, while the history is read.
    held: list[RoomEvent] | None = None


class RoomArchive:
    def __init__(self, bridge):
        self.bridge = bridge
        self.registry = bridge.registry
        self.component = bridge.component
        self._last_us = 0
        self._joins: dict[tuple[str, str, str], _Join] = {}
        #: user -> (history messages left, when counted); a full budget is forgotten.
        self._budgets: dict[str, tuple[float, float]] = {}

    # -- writing -----------------------------------------------------------------

    def _seq(self, now_us: int) -> str:
        us = self._last_us = max(now_us, self._last_us + 1)
        return f"{us:014x}{random.getrandbits(16):04x}"

    def record(self, event: RoomEvent) -> None:
        """Archive a room message for its user and give it its stanza-id; other events pass untouched."""
        if event.kind != "message" or not event.nick or event.body is None or event.archived:
            return
        now_us = to_us(time.time())
        seq = self._seq(now_us)
        if not event.stanza_id:
            event.stanza_id = seq
        stamp = to_us(event.timestamp) if event.timestamp else now_us
        if not 0 <= stamp < LAST_STAMP_US:
            stamp = now_us                              # no datetime (MAM's <delay/>) could say it
        self.registry.archive_room_message((self.component, event.user, event.room, seq, event.stanza_id,
                                            event.nick, event.body, event.origin_id, stamp, now_us))

    # -- reading -----------------------------------------------------------------

    def _event(self, user: str, resource: str | None, room: str, row) -> RoomEvent:
        _seq, id_, nick, body, origin_id, stamp, _created = row
        return RoomEvent(component=self.component, user=user, resources=[resource] if resource is not None else [],
                         room=room, kind="message", nick=nick, body=body, timestamp=stamp / 1_000_000,
                         stanza_id=id_, origin_id=origin_id, archived=True)

    @defer.inlineCallbacks
    def may_read(self, user: str, resource: str, room: str):
        """Whether the user is in the room now, or has an archive of it (was in it)."""
        if self.bridge.adapter.joined_nick(user, resource, room) is not None:
            return True
        yield self.registry.settled()
        found = yield self.registry.has_room_archive(self.component, user, room)
        return found

    @defer.inlineCallbacks
    def page(self, user: str, room: str, after: str | None = None, before: str | None = None, last: bool = False,
             start_us: int | None = None, end_us: int | None = None, limit: int = MAX_PAGE):
        """
        A page of the user's archive of ``room`` (XEP-0313 with XEP-0059): fires
        with (RoomEvents oldest first, complete). ``after``/``before`` are stanza-ids;
        an unknown one fails with item-not-found.
        """
        yield self.registry.settled()
        bounds = {}
        for name, id_ in (("after", after), ("before", before)):
            if id_ is not None:
                seq = yield self.registry.room_archive_seq(self.component, user, room, id_)
                if seq is None:
                    raise GatewayError(f"no message {id_[:80]!r} in this archive", "item-not-found", "cancel")
                bounds[name] = seq
        rows, more = yield self.registry.room_archive_page(self.component, user, room, start_us=start_us,
                                                           end_us=end_us, limit=max(0, min(limit, MAX_PAGE)),
                                                           last=last, **bounds)
        return [self._event(user, None, room, r) for r in rows], not more

    # -- history on join -----------------------------------------------------------

    def history_length(self, registration, room: str, request: HistoryRequest | None) -> int:
        """How many messages a join gets: the client's maxstanzas, else the user's setting, else the gateway's."""
        if request is not None and request.maxstanzas is not None:
            return max(0, min(request.maxstanzas, MAX_HISTORY))
        adapter = self.bridge.adapter
        if IRoomArchive.providedBy(adapter) and registration is not None:
            try:
                own = adapter.history_length(registration, room)
            except Exception:
                log.failure("history length of {room}", room=room)
                own = None
            if own is not None:
                return max(0, min(int(own), MAX_HISTORY))
        return max(0, min(self.bridge.room_history, MAX_HISTORY))

    def expect_join(self, user: str, resource: str, room: str, registration,
                    request: HistoryRequest | None) -> None:
        """A resource is about to join: read its history now, and hold its subject until it is sent."""
        now = self.bridge.clock.seconds()
        for key, join in list(self._joins.items()):
            if now - join.started > HOLD_TIMEOUT:
                self._release(key)
        key = (user, resource, room)
        self._release(key)
        if len(self._joins) >= MAX_JOINS or sum(1 for k in self._joins if k[0] == user) >= MAX_USER_JOINS:
            return
        join = self._joins[key] = _Join(started=now)
        d = self._read_history(user, resource, room, registration, request)
        d.addErrback(lambda f: log.failure("reading the history of {room} for {user} failed", f, room=room,
                                           user=user) and [])
        d.addCallback(lambda events: self._history_ready(key, join, events or []))

    def _budget(self, user: str) -> tuple[float, float]:
        now = self.bridge.clock.seconds()
        left, then = self._budgets.get(user, (float(HISTORY_BURST), now))
        return min(float(HISTORY_BURST), left + max(0.0, now - then) * HISTORY_RATE), now

    def _spend(self, user: str, n: int) -> None:
        left, now = self._budget(user)
        self._budgets[user] = (left - n, now)
        if len(self._budgets) > 10000:
            for key, (tokens, then) in list(self._budgets.items()):
                if tokens + (now - then) * HISTORY_RATE >= HISTORY_BURST:
                    del self._budgets[key]

    @defer.inlineCallbacks
    def _read_history(self, user, resource, room, registration, request: HistoryRequest | None):
        n = min(self.history_length(registration, room, request), max(0, int(self._budget(user)[0])))
        if n == 0 or (request is not None and request.maxchars is not None and request.maxchars <= 0):
            return []
        self._spend(user, n)                    # taken now, so joins at once cannot each have the whole budget
        start_us = None
        if request is not None:
            if request.since is not None:
                start_us = to_us(request.since)
            if request.seconds is not None:
                bound = to_us(time.time() - request.seconds)
                start_us = bound if start_us is None else max(start_us, bound)
        yield self.registry.settled()
        rows, _ = yield self.registry.room_archive_page(self.component, user, room, start_us=start_us, limit=n,
                                                        last=True)
        events = [self._event(user, resource, room, r) for r in rows]
        self._spend(user, len(events) - n)      # what the archive did not have goes back
        if request is not None and request.maxchars is not None:
            # The newest first, as many whole stanzas as fit.
            left, kept = request.maxchars, []
            for event in reversed(events):
                left -= self._size(event)
                if left < 0:
                    break
                kept.append(event)
            events = kept[::-1]
        return events

    def _size(self, event: RoomEvent) -> int:
        try:
            return self.bridge.output.room_event_size(event)
        except Exception:
            return len(event.body or "") + len(event.nick or "")

    def _history_ready(self, key, join: _Join, events: list[RoomEvent]) -> None:
        if self._joins.get(key) is not join:
            return                                    # released, or a newer join of the same resource
        if join.held is None:
            join.history = events
            return
        del self._joins[key]
        self._send(events, join.held)

    def _send(self, history: list[RoomEvent], held: list[RoomEvent]) -> None:
        ids = {e.stanza_id for e in history}
        for event in history:
            self.bridge._route_room_event(event)
        for event in held:
            if event.kind == "message" and event.stanza_id in ids:
                continue                              # read with the history already
            self.bridge._route_room_event(event)

    def forget_join(self, user: str, resource: str, room: str) -> None:
        """The join failed before it began: nothing more waits for its history."""
        self._release((user, resource, room))

    def _release(self, key) -> None:
        join = self._joins.pop(key, None)
        if join is not None and join.held:
            self._send([], join.held)

    def filter(self, event: RoomEvent) -> RoomEvent | None:
        """
        A live event on its way to the user's resources: for a resource whose join
        awaits its history, the subject and what follows it wait (sent by
        _history_ready); returns the event for the other resources, or None.
        """
        if not self._joins:
            return event
        keep: list[str] = []
        for resource in event.resources:
            key = (event.user, resource, event.room)
            join = self._joins.get(key)
            if join is None:
                keep.append(resource)
                continue
            if event.kind == "join-error" or (event.kind == "presence" and event.own and event.unavailable):
                self._release(key)                     # no join to complete: what waited goes, then this
                keep.append(resource)
                continue
            if join.held is not None:
                if len(join.held) < MAX_HELD:
                    join.held.append(dataclasses.replace(event, resources=[resource]))
                continue
            if event.kind != "subject":
                keep.append(resource)
                continue
            if join.history is None:
                join.held = [dataclasses.replace(event, resources=[resource])]
                continue
            del self._joins[key]
            self._send(join.history, [dataclasses.replace(event, resources=[resource])])
        if len(keep) == len(event.resources):
            return event
        return dataclasses.replace(event, resources=keep) if keep else None


__all__ = ["RoomArchive", "stamp_us", "to_us", "MAX_PAGE", "MAX_HISTORY"]
