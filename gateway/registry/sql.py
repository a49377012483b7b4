"""
The registry on SQLite (one process, WAL) or PostgreSQL (shared by several
processes), through ``twisted.enterprise.adbapi`` so no query blocks the reactor.

Queue rows are *claimed* before they are worked on: a claim names this process
and lasts ``lease`` seconds. PostgreSQL claims with ``FOR UPDATE SKIP LOCKED``
so two processes never take the same row; a process that dies leaves claims
that expire (or that it takes back when it restarts under the same instance id).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable

from twisted.enterprise import adbapi
from twisted.internet import defer

from zope.interface import implementer

from gateway.interfaces import IRegistry
from gateway.model import Registration
from gateway.registry.crypto import SecretBox
from gateway.registry.migrations import MIGRATIONS


class _WriteBatcher:
    """
    Group the hot path's queue writes into shared transactions.

    A write that arrives while a transaction is in flight waits for the next one,
    so under load many messages share one thread hop and one commit, and when
    idle a write goes out at once. Each caller's Deferred fires only after the
    transaction holding its write committed, so durability is unchanged. If a
    batch fails, its writes are retried one by one so only the faulty one fails.
    """

    def __init__(self, registry: "SQLRegistry"):
        self.registry = registry
        self.pending: list[tuple[str, tuple, defer.Deferred]] = []
        self.busy = False

    def add(self, query: str, args: tuple) -> defer.Deferred:
        d = defer.Deferred()
        self.pending.append((self.registry._sql(query), args, d))
        if not self.busy:
            self._flush()
        return d

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            self.busy = False
            return
        self.busy = True

        def run(txn):
            for query, args, _ in batch:
                txn.execute(query, args)

        def done(_):
            for _, _, d in batch:
                d.callback(None)

        def one_by_one(_failure):
            for query, args, d in batch:
                self.registry.pool.runOperation(query, args).chainDeferred(d)

        d = self.registry.pool.runInteraction(run)
        d.addCallbacks(done, one_by_one)
        d.addBoth(lambda _: self._flush())


class RegistrationConflict(Exception):
    """Another user already holds this foreign identity."""


@dataclass
class QueueItem:
    id: str
    component: str
    jid: str
    direction: str
    payload: dict[str, Any]
    attempts: int
    deadline: float
    created_at: float


def _sqlite_open(conn) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a process crash (SIGKILL); only a power
    # loss can drop the last transactions.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")


@implementer(IRegistry)
class SQLRegistry:
    def __init__(self, url: str, secret_key: str, instance_id: str = "local", lease: float = 120.0):
        self.url = url
        self.box = SecretBox(secret_key)
        self.instance_id = instance_id
        self.lease = lease
        self.pool: adbapi.ConnectionPool | None = None
        if url.startswith("sqlite:"):
            self.dialect = "sqlite"
            path = url[len("sqlite:"):]
            if path.startswith("//"):
                path = path[2:]
            self.path = path
        else:
            self.dialect = "postgresql"
            self.path = url
        self.shared = self.dialect == "postgresql"
        self._batch = _WriteBatcher(self)

    # -- plumbing ---------------------------------------------------------

    def _sql(self, query: str) -> str:
        return query.replace("?", "%s") if self.dialect == "postgresql" else query

    def _connect(self) -> adbapi.ConnectionPool:
        if self.dialect == "sqlite":
            if self.path != ":memory:" and os.path.dirname(self.path):
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
            # One connection: SQLite serialises writers anyway, and one thread
            # keeps queue operations in arrival order.
            return adbapi.ConnectionPool(
                "sqlite3", self.path, check_same_thread=False, cp_min=1, cp_max=1,
                cp_openfun=_sqlite_open, cp_noisy=False)
        url = self.path.replace("postgres://", "postgresql://", 1)
        return adbapi.ConnectionPool("psycopg2", url, cp_min=1, cp_max=4, cp_reconnect=True,
                                     cp_noisy=False)

    def _run(self, query: str, args: Iterable = ()) -> defer.Deferred:
        return self.pool.runQuery(self._sql(query), tuple(args))

    def _op(self, query: str, args: Iterable = ()) -> defer.Deferred:
        return self.pool.runOperation(self._sql(query), tuple(args))

    def _interaction(self, fn, *args) -> defer.Deferred:
        return self.pool.runInteraction(fn, *args)

    @defer.inlineCallbacks
    def open(self):
        self.pool = self._connect()
        yield self._interaction(self._migrate)
        if not self.shared:
            # Only this process uses an SQLite file: every claim is ours.
            yield self._op("UPDATE queue SET claimed_by = NULL, claimed_until = NULL")
        else:
            yield self._op("UPDATE queue SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = ?",
                           (self.instance_id,))

    def _migrate(self, txn) -> None:
        if self.dialect == "postgresql":
            # Two processes starting at once must not both migrate.
            txn.execute("SELECT pg_advisory_xact_lock(7471001)")
        txn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        txn.execute("SELECT MAX(version) FROM schema_version")
        row = txn.fetchone()
        current = row[0] if row and row[0] is not None else 0
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                txn.execute(statement)
            txn.execute(self._sql("INSERT INTO schema_version (version) VALUES (?)"), (version,))

    def schema_version(self) -> defer.Deferred:
        d = self._run("SELECT MAX(version) FROM schema_version")
        return d.addCallback(lambda rows: rows[0][0])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def ping(self) -> defer.Deferred:
        return self._run("SELECT 1").addCallback(lambda rows: rows[0][0] == 1)

    # -- registrations ----------------------------------------------------

    _REG_COLUMNS = "component, jid, foreign_id, settings, secrets, subscribed, created_at"

    def _registration(self, row) -> Registration:
        return Registration(component=row[0], jid=row[1], foreign_id=row[2],
                            settings=json.loads(row[3]), secrets=self.box.open(row[4]),
                            subscribed=bool(row[5]), created_at=row[6])

    def _one(self, rows):
        return self._registration(rows[0]) if rows else None

    def get_registration(self, component: str, jid: str) -> defer.Deferred:
        d = self._run(f"SELECT {self._REG_COLUMNS} FROM registrations WHERE component = ? AND jid = ?",
                      (component, jid))
        return d.addCallback(self._one)

    def registration_by_foreign_id(self, component: str, foreign_id: str) -> defer.Deferred:
        d = self._run(f"SELECT {self._REG_COLUMNS} FROM registrations WHERE component = ? AND foreign_id = ?",
                      (component, foreign_id))
        return d.addCallback(self._one)

    def list_registrations(self, component: str | None = None) -> defer.Deferred:
        if component is None:
            d = self._run(f"SELECT {self._REG_COLUMNS} FROM registrations ORDER BY component, jid")
        else:
            d = self._run(f"SELECT {self._REG_COLUMNS} FROM registrations WHERE component = ? ORDER BY jid",
                          (component,))
        return d.addCallback(lambda rows: [self._registration(r) for r in rows])

    def count_registrations(self, component: str) -> defer.Deferred:
        d = self._run("SELECT COUNT(*) FROM registrations WHERE component = ?", (component,))
        return d.addCallback(lambda rows: rows[0][0])

    def put_registration(self, reg: Registration) -> defer.Deferred:
        """Insert or replace; fails with RegistrationConflict when foreign_id is taken."""
        return self._put_sealed(reg.component, reg.jid, reg.foreign_id, reg.settings,
                                self.box.seal(reg.secrets), reg.subscribed, reg.created_at)

    def _put_sealed(self, component, jid, foreign_id, settings, sealed, subscribed, created_at):
        now = time.time()
        d = self._op(
            "INSERT INTO registrations (component, jid, foreign_id, settings, secrets, subscribed, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (component, jid) DO UPDATE SET foreign_id = excluded.foreign_id, "
            "settings = excluded.settings, secrets = excluded.secrets, "
            "subscribed = excluded.subscribed, updated_at = excluded.updated_at",
            (component, jid, foreign_id, json.dumps(settings, sort_keys=True), sealed,
             bool(subscribed), created_at, now))

        def conflict(failure):
            failure.trap(self._integrity_error())
            raise RegistrationConflict(foreign_id)

        return d.addErrback(conflict)

    def _integrity_error(self):
        if self.dialect == "sqlite":
            import sqlite3

            return sqlite3.IntegrityError
        import psycopg2

        return psycopg2.IntegrityError

    def set_subscribed(self, component: str, jid: str, subscribed: bool) -> defer.Deferred:
        return self._op("UPDATE registrations SET subscribed = ? WHERE component = ? AND jid = ?",
                        (bool(subscribed), component, jid))

    def delete_registration(self, component: str, jid: str) -> defer.Deferred:
        """Remove the user and everything stored for them on this component."""

        def txn_delete(txn):
            txn.execute(self._sql("DELETE FROM registrations WHERE component = ? AND jid = ?"),
                        (component, jid))
            found = txn.rowcount > 0
            for table in ("message_ids", "queue", "counters", "threads"):
                txn.execute(self._sql(f"DELETE FROM {table} WHERE component = ? AND jid = ?"),
                            (component, jid))
            return found

        return self._interaction(txn_delete)

    # -- address map ------------------------------------------------------

    def put_address(self, component: str, address: str, localpart: str) -> defer.Deferred:
        return self._op("INSERT INTO address_map (component, address, localpart) VALUES (?, ?, ?) "
                        "ON CONFLICT (component, address) DO UPDATE SET localpart = excluded.localpart",
                        (component, address, localpart))

    def address_for_localpart(self, component: str, localpart: str) -> defer.Deferred:
        d = self._run("SELECT address FROM address_map WHERE component = ? AND localpart = ?",
                      (component, localpart))
        return d.addCallback(lambda rows: rows[0][0] if rows else None)

    def localpart_for_address(self, component: str, address: str) -> defer.Deferred:
        d = self._run("SELECT localpart FROM address_map WHERE component = ? AND address = ?",
                      (component, address))
        return d.addCallback(lambda rows: rows[0][0] if rows else None)

    # -- message ids ------------------------------------------------------

    def put_message_id(self, component: str, jid: str, xmpp_id: str, foreign_id: str,
                       contact: str, resource: str | None = None, receipt: bool = False) -> defer.Deferred:
        return self._op(
            "INSERT INTO message_ids (component, jid, xmpp_id, foreign_id, contact, resource, receipt, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (component, jid, xmpp_id) DO UPDATE "
            "SET foreign_id = excluded.foreign_id, contact = excluded.contact, resource = excluded.resource, "
            "receipt = excluded.receipt",
            (component, jid, xmpp_id, foreign_id, contact, resource, bool(receipt), time.time()))

    def message_by_foreign_id(self, component: str, foreign_id: str) -> defer.Deferred:
        """(jid, xmpp_id, contact, resource, receipt) of the message the network calls foreign_id."""
        d = self._run("SELECT jid, xmpp_id, contact, resource, receipt FROM message_ids "
                      "WHERE component = ? AND foreign_id = ?", (component, foreign_id))
        return d.addCallback(lambda rows: (rows[0][:4] + (bool(rows[0][4]),)) if rows else None)

    def foreign_id_for(self, component: str, jid: str, xmpp_id: str) -> defer.Deferred:
        d = self._run("SELECT foreign_id FROM message_ids WHERE component = ? AND jid = ? AND xmpp_id = ?",
                      (component, jid, xmpp_id))
        return d.addCallback(lambda rows: rows[0][0] if rows else None)

    def purge_message_ids(self, older_than: float) -> defer.Deferred:
        return self._op("DELETE FROM message_ids WHERE created_at < ?", (older_than,))

    # -- threads ----------------------------------------------------------

    def add_to_thread(self, component: str, jid: str, thread: str, message_id: str,
                      subject: str | None = None) -> defer.Deferred:
        return self._op("INSERT INTO threads (component, jid, thread, message_id, subject, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (component, jid, message_id) DO NOTHING",
                        (component, jid, thread, message_id, subject, time.time()))

    def thread_messages(self, component: str, jid: str, thread: str) -> defer.Deferred:
        """[(message_id, subject)] of a thread, oldest first."""
        d = self._run("SELECT message_id, subject FROM threads WHERE component = ? AND jid = ? AND thread = ? "
                      "ORDER BY created_at", (component, jid, thread))
        return d.addCallback(lambda rows: [(r[0], r[1]) for r in rows])

    def thread_of(self, component: str, jid: str, message_ids: list[str]) -> defer.Deferred:
        """The thread any of ``message_ids`` belongs to, or None."""
        if not message_ids:
            return defer.succeed(None)
        marks = ", ".join("?" for _ in message_ids)
        d = self._run(f"SELECT thread FROM threads WHERE component = ? AND jid = ? AND message_id IN ({marks}) "
                      "ORDER BY created_at LIMIT 1", (component, jid, *message_ids))
        return d.addCallback(lambda rows: rows[0][0] if rows else None)

    # -- counters ---------------------------------------------------------

    def counter(self, component: str, jid: str, name: str, period: str) -> defer.Deferred:
        d = self._run("SELECT value FROM counters WHERE component = ? AND jid = ? AND name = ? AND period = ?",
                      (component, jid, name, period))
        return d.addCallback(lambda rows: rows[0][0] if rows else 0)

    def add_to_counter(self, component: str, jid: str, name: str, period: str, amount: int = 1) -> defer.Deferred:
        """Atomically add ``amount``; fires with the new value."""
        d = self._run("INSERT INTO counters (component, jid, name, period, value) VALUES (?, ?, ?, ?, ?) "
                      "ON CONFLICT (component, jid, name, period) DO UPDATE SET value = counters.value + "
                      "excluded.value RETURNING value", (component, jid, name, period, amount))
        return d.addCallback(lambda rows: rows[0][0])

    def purge_counters(self, component: str, name: str, keep_from_period: str) -> defer.Deferred:
        """Drop rows of periods before ``keep_from_period`` (periods sort as strings, e.g. dates)."""
        return self._op("DELETE FROM counters WHERE component = ? AND name = ? AND period < ?",
                        (component, name, keep_from_period))

    # -- queue (outbox and inbox) -----------------------------------------

    def enqueue(self, item: QueueItem, claimed: bool = True) -> defer.Deferred:
        """Store a message durably; by default already claimed by us, as we work on it at once."""
        now = time.time()
        return self._batch.add(
            "INSERT INTO queue (id, component, jid, direction, payload, attempts, next_attempt, deadline, "
            "claimed_by, claimed_until, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (item.id, item.component, item.jid, item.direction, json.dumps(item.payload), item.attempts,
             now, item.deadline, self.instance_id if claimed else None,
             now + self.lease if claimed else None, item.created_at))

    def claim(self, component: str, direction: str, limit: int = 100,
              now: float | None = None) -> defer.Deferred:
        """Take up to ``limit`` due, unclaimed rows; oldest first."""
        now = time.time() if now is None else now
        lock = " FOR UPDATE SKIP LOCKED" if self.dialect == "postgresql" else ""
        query = (
            "UPDATE queue SET claimed_by = ?, claimed_until = ? WHERE id IN ("
            "SELECT id FROM queue WHERE component = ? AND direction = ? AND next_attempt <= ? "
            "AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY next_attempt LIMIT ?"
            f"{lock}) RETURNING id, component, jid, direction, payload, attempts, deadline, created_at")

        def txn_claim(txn):
            txn.execute(self._sql(query), (self.instance_id, now + self.lease, component, direction,
                                           now, now, limit))
            rows = txn.fetchall()
            items = [QueueItem(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7]) for r in rows]
            return sorted(items, key=lambda i: i.created_at)

        return self._interaction(txn_claim)

    def finish(self, item_id: str) -> defer.Deferred:
        return self._batch.add("DELETE FROM queue WHERE id = ?", (item_id,))

    def release(self, item_id: str, next_attempt: float, attempts: int, error: str | None = None) -> defer.Deferred:
        """Give a row back for a later attempt."""
        return self._batch.add("UPDATE queue SET claimed_by = NULL, claimed_until = NULL, next_attempt = ?, "
                               "attempts = ?, last_error = ? WHERE id = ?", (next_attempt, attempts, error, item_id))

    def queue_depth(self, component: str) -> defer.Deferred:
        d = self._run("SELECT direction, COUNT(*) FROM queue WHERE component = ? GROUP BY direction",
                      (component,))
        return d.addCallback(lambda rows: {"out": 0, "in": 0} | {r[0]: r[1] for r in rows})

    # -- export / import --------------------------------------------------

    def export(self) -> defer.Deferred:
        """Registrations as JSON-ready dicts; secrets stay sealed (import needs the same key)."""
        d = self._run("SELECT component, jid, foreign_id, settings, secrets, subscribed, created_at "
                      "FROM registrations ORDER BY component, jid")
        return d.addCallback(lambda rows: [
            {"component": r[0], "jid": r[1], "foreign_id": r[2], "settings": json.loads(r[3]),
             "sealed_secrets": r[4], "subscribed": bool(r[5]), "created_at": r[6]} for r in rows])

    @defer.inlineCallbacks
    def import_(self, rows: list[dict[str, Any]]):
        count = 0
        for row in rows:
            self.box.open(row.get("sealed_secrets"))  # fails early on a foreign key
            yield self._put_sealed(row["component"], row["jid"], row.get("foreign_id"),
                                   row.get("settings", {}), row.get("sealed_secrets"),
                                   row.get("subscribed", True), row.get("created_at", time.time()))
            count += 1
        return count


@defer.inlineCallbacks
def open_registry(url: str, secret_key: str, instance_id: str = "local", lease: float = 120.0):
    registry = SQLRegistry(url, secret_key, instance_id, lease)
    yield registry.open()
    return registry
