"""
The registry on SQLite (one process, WAL) or PostgreSQL (shared by several
processes), through ``twisted.enterprise.adbapi`` so no query blocks the reactor.

Queue rows are *claimed* before they are worked on: a claim names this process
and lasts ``lease`` seconds. PostgreSQL claims with ``FOR UPDATE SKIP LOCKED``
so two processes never take the same row; a process that dies leaves claims
that expire (or that it takes back when it restarts under the same instance id).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable

from twisted.enterprise import adbapi
from twisted.internet import defer, threads
from twisted.logger import Logger

from zope.interface import implementer

from gateway.interfaces import IRegistry
from gateway.ids import new_id
from gateway.model import Registration
from gateway.registry.crypto import SecretBox, SecretsUnreadable, new_salt
from gateway.registry import payloads
from gateway.registry.backup import check_schema
from gateway.registry.migrations import MIGRATIONS

_log = Logger(namespace="gateway.registry")


def new_token() -> str:
    """A claim token: unique and unguessable, from the same pool as message ids."""
    return new_id()


class _WriteBatcher:
    """
    Group the hot path's queue writes into shared transactions (group commit).

    A write that arrives while a transaction is in flight waits for the next one,
    so under load many messages share one thread hop and one commit (one fsync),
    and when idle a write goes out at once. Each caller's Deferred fires only
    after the transaction holding its write committed, so durability is
    unchanged. A write is a statement or a function of the transaction (for
    writes that must stay all-or-none, like a mail for several users). If a
    batch fails, its writes are retried one by one so only the faulty one fails.
    """

    def __init__(self, registry: "SQLRegistry"):
        self.registry = registry
        self.pending: list[tuple[Any, defer.Deferred | None]] = []
        self.busy = False
        #: Rows of one statement gathered for the next transaction (add_row), by statement.
        self._rows: dict[str, list[tuple]] = {}
        #: Rows add_row could not store (after the retry on their own), for the log and tests.
        self.rows_lost = 0
        #: The queue rows' deletes gathered for the next transaction (delete_row), and the
        #: rows other writes of that transaction touched after the group began.
        self._deletes: _QueueDeletes | None = None
        self._touched: set[str] = set()

    def add(self, query: str, args: tuple, row: str | None = None) -> defer.Deferred:
        """One statement; ``row``: the queue row it writes, if any (see delete_row)."""
        return self.add_call(functools.partial(_rowcount, query=self.registry._sql(query), args=args),
                             (row,) if row is not None else ())

    def add_call(self, work, rows: Iterable[str] = ()) -> defer.Deferred:
        """
        Run ``work(txn)`` in the next shared transaction; fires with its result
        once committed. ``rows``: the ids of the queue rows it writes.
        """
        d = defer.Deferred()
        if self._deletes is not None:
            self._touched.update(rows)
        self.pending.append((work, d))
        if not self.busy:
            self._flush()
        return d

    def delete_row(self, row: str, token: str | None) -> defer.Deferred:
        """
        Delete queue row ``row`` if it still carries claim ``token``; fires with
        1, or 0 if it does not (fenced out). The deletes of one transaction go
        out as one statement per few hundred rows instead of one each. They
        take the place of the first of them among the transaction's writes,
        which is the order they were asked in for every row no write between
        touched: a delete of a row written after the group began (an insert,
        release, park, checkpoint or renewal of that row) starts a new group,
        after that write, so no delete ever runs before a write asked for
        before it on its row.
        """
        group = self._deletes
        if group is None or row in self._touched:
            group = self._deletes = _QueueDeletes(self.registry)
            self._touched = set()
            self.pending.append((group.run, group.done))
        d = defer.Deferred()
        group.rows.append((row, token, d))
        if not self.busy:
            self._flush()
        return d

    def delete_rows(self, pairs: list[tuple[str, str | None]]) -> defer.Deferred:
        """
        delete_row for many rows with one Deferred for them all: fires with
        the list of their outcomes (1 or 0 each, in order). The inbound
        barrier's batch needs no Deferred per row.
        """
        if not pairs:
            return defer.succeed([])
        group = self._deletes
        if group is None or not self._touched.isdisjoint(row for row, _ in pairs):
            group = self._deletes = _QueueDeletes(self.registry)
            self._touched = set()
            self.pending.append((group.run, group.done))
        d = defer.Deferred()
        start = len(group.rows)
        group.rows.extend((row, token, None) for row, token in pairs)
        group.batches.append((start, len(group.rows), d))
        if not self.busy:
            self._flush()
        return d

    def add_row(self, query: str, args: tuple) -> None:
        """
        One more row for ``query`` in the next shared transaction, written with
        the others of that statement in one executemany: the cheapest write
        there is, for traffic nobody waits on (the room archive). No Deferred:
        settled() says when it is in; a failure is logged and counted.
        """
        rows = self._rows.get(query)
        if rows is None:
            rows = self._rows[query] = []
            self.pending.append((functools.partial(_executemany, query=self.registry._sql(query), rows=rows), None))
        rows.append(args)
        if not self.busy:
            self._flush()

    def settled(self) -> defer.Deferred:
        """Fires after every write added so far has committed (or failed)."""
        if not self.busy and not self.pending:
            return defer.succeed(None)
        d = defer.Deferred()
        self.pending.append((None, d))
        return d

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        self._rows = {}
        self._deletes, self._touched = None, set()
        if not batch:
            self.busy = False
            return
        self.busy = True

        def run(txn):
            return [None if work is None else work(txn) for work, _ in batch]

        def done(results):
            for (_, d), result in zip(batch, results):
                if d is not None:
                    d.callback(result)

        def one_by_one(_failure):
            for work, d in batch:
                if work is None:
                    d.callback(None)
                elif d is None:
                    self.registry.pool.runInteraction(work).addErrback(self._rows_one_by_one, work)
                else:
                    self.registry.pool.runInteraction(work).chainDeferred(d)

        d = self.registry.pool.runInteraction(run)
        d.addCallbacks(done, one_by_one)
        d.addBoth(lambda _: self._flush())


    def _rows_one_by_one(self, _failure, work) -> None:
        """Rows whose executemany failed on its own too: each alone, so only a faulty one is lost."""
        for row in work.keywords["rows"]:
            d = self.registry.pool.runInteraction(_rowcount, work.keywords["query"], row)
            d.addErrback(self._row_lost)

    def _row_lost(self, failure) -> None:
        self.rows_lost += 1
        _log.failure("a row written without a waiting caller (the room archive) could not be stored", failure)


class _QueueDeletes:
    """
    The fenced deletes of one transaction (_WriteBatcher.delete_row): one
    statement per ``CHUNK`` rows, each row deleted only with its claim token,
    and each caller told whether its row was. ``id IN (...)`` lets both
    databases find the rows by primary key (SQLite scans the table for a
    row-value IN alone); the pair check keeps the fence exact.
    """

    CHUNK = 400

    def __init__(self, registry: "SQLRegistry"):
        self.registry = registry
        self.rows: list[tuple[str, str | None, defer.Deferred | None]] = []
        #: Callers of delete_rows: their slice of ``rows`` and the Deferred told its outcomes.
        self.batches: list[tuple[int, int, defer.Deferred]] = []
        #: Fires with the (id, token) pairs deleted once the transaction committed.
        self.done = defer.Deferred()
        self.done.addCallbacks(self._tell, self._one_by_one)

    def _query(self, n: int) -> str:
        return self.registry._sql(
            "DELETE FROM queue WHERE id IN (" + ", ".join(["?"] * n) + ") AND (id, claim_token) IN (VALUES "
            + ", ".join(["(?, ?)"] * n) + ") RETURNING id, claim_token")

    def run(self, txn) -> set[tuple[str, str]]:
        deleted: set[tuple[str, str]] = set()
        rows = self.rows
        for start in range(0, len(rows), self.CHUNK):
            chunk = rows[start:start + self.CHUNK]
            args = [row for row, _, _ in chunk]
            for row, token, _ in chunk:
                args += (row, token)
            txn.execute(self._query(len(chunk)), args)
            deleted.update((row, token) for row, token in txn.fetchall())
        return deleted

    def _tell(self, deleted: set[tuple[str, str]]) -> None:
        outcomes = []
        for row, token, d in self.rows:
            key = (row, token)
            if key in deleted:
                deleted.discard(key)        # asked twice: the first one deleted it
                outcomes.append(1)
            else:
                outcomes.append(0)
            if d is not None:
                d.callback(outcomes[-1])
        for start, stop, d in self.batches:
            d.callback(outcomes[start:stop])

    def _one_by_one(self, _failure) -> None:
        """
        The group failed in a batch and again on its own: each delete alone, so
        only a faulty one fails (a delete_rows caller is told the first failure
        among its rows; those not deleted are taken again when their leases lapse).
        """
        query = self.registry._sql("DELETE FROM queue" + SQLRegistry._FENCE)
        alone = []
        for row, token, d in self.rows:
            done = self.registry.pool.runInteraction(_rowcount, query, (row, token))
            if d is not None:
                done.chainDeferred(d)
            else:
                alone.append(done)
        at = 0
        for start, stop, d in self.batches:
            count = stop - start
            defer.gatherResults(alone[at:at + count], consumeErrors=True).addErrback(
                lambda f: f.value.subFailure).chainDeferred(d)
            at += count


def _rowcount(txn, query: str, args: tuple) -> int:
    txn.execute(query, args)
    return txn.rowcount


def _executemany(txn, query: str, rows: list[tuple]) -> int:
    txn.executemany(query, rows)
    return len(rows)


class RegistrationConflict(Exception):
    """Another user already holds this foreign identity."""


class InstanceConflict(Exception):
    """Another live process already uses this instance id (or, on SQLite, this file)."""


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
    #: The claim this process holds on the row: every change to the row is
    #: conditional on it, so a lease taken over by another process fences us out.
    token: str | None = None
    #: Until when (this process's clock) the lease is known to be ours.
    lease_until: float = 0.0
    last_error: str | None = None
    parked_at: float | None = None


def _sqlite_open(conn) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before it returns, so the 250 to an SMTP
    # client or the 200 to a webhook that follows it survives a power loss
    # (NORMAL in WAL mode survives only a process crash). Group commit in
    # _WriteBatcher keeps the fsyncs to one per batch.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")


@implementer(IRegistry)
class SQLRegistry:
    def __init__(self, url: str, secret_key: str, instance_id: str = "local", lease: float = 120.0,
                 old_keys: Iterable[str] = ()):
        self.url = url
        self._keys = (secret_key, tuple(old_keys))
        #: Built by open(): a passphrase key needs the registry's salt, and deriving it is slow.
        self.box: SecretBox | None = None
        self.kdf_salt: bytes | None = None
        self.instance_id = instance_id
        #: Who claims rows: this life of the instance. A stalled earlier life
        #: with the same instance id can then neither renew nor trust our rows.
        self.claimant = f"{instance_id}/{new_token()[:12]}"
        #: Rows each outbox of this process holds, by component (the outboxes
        #: own these dicts): only they are renewed, so a row nobody works on any
        #: more (its work failed) lapses and is taken over instead of staying
        #: claimed for ever.
        self._held: dict[str, dict[str, "QueueItem"]] = {}
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
        #: The last lease renewal that committed: the rows it renewed are ours until ``until``.
        self.renewed_until = 0.0
        self.renewed_ids: frozenset[tuple[str, str]] = frozenset()

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
        # Opening never touches the queue: the registry CLI opens it next to a
        # live gateway. Only a gateway process takes over claims (start_instance).
        salt = yield self._interaction(self._migrate)
        self.kdf_salt = salt
        # scrypt needs 32 MiB and is slow on purpose (per passphrase key): a thread, not the reactor.
        self.box = yield threads.deferToThread(SecretBox, self._keys[0], self._keys[1], salt)

    def _migrate(self, txn) -> bytes:
        """Bring the schema up to date; the registry's KDF salt (created on first open)."""
        if self.dialect == "postgresql":
            # Two processes starting at once must not both migrate.
            txn.execute("SELECT pg_advisory_xact_lock(7471001)")
        txn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        txn.execute("SELECT version FROM schema_version")
        # Each migration by its number, not "everything above the highest":
        # numbers are handed out to parallel work, which may land out of order.
        applied = {row[0] for row in txn.fetchall()}
        check_schema(applied)
        for version, statements in MIGRATIONS:
            if version in applied:
                continue
            for statement in statements:
                txn.execute(statement)
            txn.execute(self._sql("INSERT INTO schema_version (version) VALUES (?)"), (version,))
        # Two processes opening a new registry at once: the first salt stays.
        txn.execute(self._sql("INSERT INTO registry_meta (name, value) VALUES ('kdf_salt', ?) "
                              "ON CONFLICT (name) DO NOTHING"), (base64.b64encode(new_salt()).decode(),))
        txn.execute("SELECT value FROM registry_meta WHERE name = 'kdf_salt'")
        return base64.b64decode(txn.fetchone()[0])

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
        try:
            secrets, unreadable = self.box.open(row[4]), False
        except SecretsUnreadable:
            # One row no key opens must not fail every lookup (or listing) it is
            # part of: it comes back flagged, and whoever would use the secrets refuses.
            secrets, unreadable = {}, True
        return Registration(component=row[0], jid=row[1], foreign_id=row[2],
                            settings=json.loads(row[3]), secrets=secrets,
                            subscribed=bool(row[5]), created_at=row[6], secrets_unreadable=unreadable)

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
        """
        Insert or replace; fails with RegistrationConflict when foreign_id is
        taken. A registration read with unreadable secrets keeps its stored
        token (a later key may open it); registering again replaces it.
        """
        keep = reg.secrets_unreadable and not reg.secrets
        return self._put_sealed(reg.component, reg.jid, reg.foreign_id, reg.settings,
                                None if keep else self.box.seal(reg.secrets), reg.subscribed, reg.created_at,
                                keep_secrets=keep)

    def _put_sealed(self, component, jid, foreign_id, settings, sealed, subscribed, created_at,
                    keep_secrets: bool = False):
        now = time.time()
        secrets = "registrations.secrets" if keep_secrets else "excluded.secrets"
        d = self._op(
            "INSERT INTO registrations (component, jid, foreign_id, settings, secrets, subscribed, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (component, jid) DO UPDATE SET foreign_id = excluded.foreign_id, "
            f"settings = excluded.settings, secrets = {secrets}, "
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
            for table in ("message_ids", "queue", "counters", "threads", "room_archive", "roster_contacts"):
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
                       contact: str, resource: str | None = None, receipt: bool = False,
                       verdict_by: float | None = None) -> defer.Deferred:
        query = self._sql(
            "INSERT INTO message_ids (component, jid, xmpp_id, foreign_id, contact, resource, receipt, "
            "created_at, verdict_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (component, jid, xmpp_id) "
            "DO UPDATE SET foreign_id = excluded.foreign_id, contact = excluded.contact, "
            "resource = excluded.resource, receipt = excluded.receipt, verdict_by = excluded.verdict_by")

        def txn_put(txn):
            watch = verdict_by
            if watch is not None:
                # The network may have spoken before this record existed (a status
                # that overtook the lost answer to the send): then nothing is overdue.
                txn.execute(self._sql("SELECT 1 FROM seen WHERE component = ? AND key = ?"),
                            (component, "confirmed:" + foreign_id))
                if txn.fetchone():
                    watch = None
            txn.execute(query, (component, jid, xmpp_id, foreign_id, contact, resource, bool(receipt),
                                time.time(), watch))

        return self._interaction(txn_put)

    def confirm_message(self, component: str, foreign_id: str) -> defer.Deferred:
        """
        The network said something about the message: no watchdog error for it
        any more, also if its record is written only later (remembered like a
        foreign id, for the same retention).
        """
        now = time.time()

        def txn_confirm(txn):
            txn.execute(self._sql("UPDATE message_ids SET verdict_by = NULL WHERE component = ? AND foreign_id = ? "
                                  "AND verdict_by IS NOT NULL"), (component, foreign_id))
            txn.execute(self._sql("INSERT INTO seen (component, key, created_at) VALUES (?, ?, ?) "
                                  "ON CONFLICT (component, key) DO NOTHING"),
                        (component, "confirmed:" + foreign_id, now))

        return self._interaction(txn_confirm)

    def overdue_messages(self, component: str, now: float | None = None) -> defer.Deferred:
        """
        Messages whose verdict is overdue, each taken once (its watch cleared in
        the same transaction, so two processes never both report it): fires
        with [(jid, xmpp_id, contact, resource)].
        """
        now = time.time() if now is None else now
        lock = " FOR UPDATE SKIP LOCKED" if self.dialect == "postgresql" else ""

        def txn_overdue(txn):
            txn.execute(self._sql("UPDATE message_ids SET verdict_by = NULL WHERE (component, jid, xmpp_id) IN ("
                                  "SELECT component, jid, xmpp_id FROM message_ids WHERE component = ? AND "
                                  f"verdict_by IS NOT NULL AND verdict_by <= ? LIMIT 500{lock}) "
                                  "RETURNING jid, xmpp_id, contact, resource"), (component, now))
            return [tuple(r) for r in txn.fetchall()]

        return self._interaction(txn_overdue)

    def message_by_foreign_id(self, component: str, foreign_id: str, jid: str | None = None) -> defer.Deferred:
        """
        (jid, xmpp_id, contact, resource, receipt) of the message the network
        calls foreign_id; with ``jid``, only if it is that user's message.
        """
        if jid:
            d = self._run("SELECT jid, xmpp_id, contact, resource, receipt FROM message_ids "
                          "WHERE component = ? AND foreign_id = ? AND jid = ?", (component, foreign_id, jid))
        else:
            d = self._run("SELECT jid, xmpp_id, contact, resource, receipt FROM message_ids "
                          "WHERE component = ? AND foreign_id = ?", (component, foreign_id))
        return d.addCallback(lambda rows: (rows[0][:4] + (bool(rows[0][4]),)) if rows else None)

    def foreign_id_for(self, component: str, jid: str, xmpp_id: str) -> defer.Deferred:
        d = self._run("SELECT foreign_id FROM message_ids WHERE component = ? AND jid = ? AND xmpp_id = ?",
                      (component, jid, xmpp_id))
        return d.addCallback(lambda rows: rows[0][0] if rows else None)

    # -- retention ----------------------------------------------------------

    #: What ``purge`` may delete, by table: the primary key and which rows are old.
    #: A message id still awaiting an SMS verdict (verdict_by set) is kept until
    #: its verdict, whatever its age; counter periods are dates ("2026-11-23").
    _PURGES = {
        "message_ids": ("component, jid, xmpp_id", "created_at < ? AND verdict_by IS NULL"),
        "threads": ("component, jid, message_id", "created_at < ?"),
        "counters": ("component, jid, name, period", "period < ?"),
        "seen": ("component, key", "created_at < ?"),
        # The room archive's bound is in microseconds (its times are).
        "room_archive": ("component, jid, room, seq", "created_us < ?"),
    }

    def purge(self, table: str, bound: float | str, limit: int | None = None) -> defer.Deferred:
        """
        Delete up to ``limit`` old rows of ``table`` (older than ``bound``) in
        one short transaction; fires with how many went. Called in a loop by
        the retention job, so no purge holds the database for long. Two
        processes purging at once only race to delete the same rows.
        """
        key, old = self._PURGES[table]
        if limit is None:
            query, args = f"DELETE FROM {table} WHERE {old}", (bound,)
        else:
            query = f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE {old} LIMIT ?)"
            args = (bound, limit)

        def run(txn):
            txn.execute(self._sql(query), args)
            return max(txn.rowcount, 0)

        return self._interaction(run)

    def purge_room_archive_rows(self, max_rows: int, limit: int) -> defer.Deferred:
        """
        Delete up to ``limit`` of the oldest archived messages of every (user,
        room) holding more than ``max_rows``, in one short transaction; fires
        with how many went (the retention job calls again while it is ``limit``).
        """
        def run(txn):
            txn.execute(self._sql("SELECT component, jid, room FROM room_archive GROUP BY component, jid, room "
                                  "HAVING COUNT(*) > ?"), (max_rows,))
            deleted = 0
            for component, jid, room in txn.fetchall():
                if deleted >= limit:
                    break
                txn.execute(self._sql("SELECT seq FROM room_archive WHERE component = ? AND jid = ? AND room = ? "
                                      "ORDER BY seq DESC LIMIT 1 OFFSET ?"), (component, jid, room, max_rows))
                row = txn.fetchone()
                if row is None:
                    continue
                txn.execute(self._sql(
                    "DELETE FROM room_archive WHERE (component, jid, room, seq) IN (SELECT component, jid, room, seq "
                    "FROM room_archive WHERE component = ? AND jid = ? AND room = ? AND seq <= ? ORDER BY seq LIMIT ?)"),
                    (component, jid, room, row[0], limit - deleted))
                deleted += max(txn.rowcount, 0)
            return deleted

        return self._interaction(run)

    # -- room archive -----------------------------------------------------

    _ARCHIVE_INSERT = ("INSERT INTO room_archive (component, jid, room, seq, id, nick, body, origin_id, stamp_us, "
                       "created_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                       "ON CONFLICT (component, jid, room, seq) DO NOTHING")

    def archive_room_message(self, row: tuple) -> None:
        """
        Store one room message, (component, jid, room, seq, id, nick, body,
        origin_id, stamp_us, created_us), in the next group commit with the
        others (one executemany per batch). Nothing waits on it: settled()
        fires once it is in; a failure is logged and counted, never raised.
        """
        self._batch.add_row(self._ARCHIVE_INSERT, row)

    def room_archive_seq(self, component: str, jid: str, room: str, id_: str) -> defer.Deferred:
        """The ``seq`` of the archived message users know as ``id_``, or None."""
        d = self._run("SELECT MAX(seq) FROM room_archive WHERE component = ? AND jid = ? AND room = ? AND id = ?",
                      (component, jid, room, id_))
        return d.addCallback(lambda rows: rows[0][0] if rows else None)

    def has_room_archive(self, component: str, jid: str, room: str) -> defer.Deferred:
        d = self._run("SELECT 1 FROM room_archive WHERE component = ? AND jid = ? AND room = ? LIMIT 1",
                      (component, jid, room))
        return d.addCallback(lambda rows: bool(rows))

    def room_archive_page(self, component: str, jid: str, room: str, after: str | None = None,
                          before: str | None = None, start_us: int | None = None, end_us: int | None = None,
                          limit: int = 100, last: bool = False) -> defer.Deferred:
        """
        Archived messages of a user's room between the ``seq`` bounds (exclusive)
        and times (inclusive), oldest first: the first ``limit`` of them, or with
        ``last`` (or ``before``) the last ``limit``. Fires with (rows, more):
        rows of (seq, id, nick, body, origin_id, stamp_us, created_us), and whether
        more match beyond the page in the direction read.
        """
        where, args = ["component = ?", "jid = ?", "room = ?"], [component, jid, room]
        for clause, value in (("seq > ?", after), ("seq < ?", before), ("created_us >= ?", start_us),
                              ("created_us <= ?", end_us)):
            if value is not None:
                where.append(clause)
                args.append(value)
        backwards = last or before is not None
        d = self._run(f"SELECT seq, id, nick, body, origin_id, stamp_us, created_us FROM room_archive "
                      f"WHERE {' AND '.join(where)} ORDER BY seq {'DESC' if backwards else 'ASC'} LIMIT ?",
                      (*args, limit + 1))

        def page(rows):
            rows = [tuple(r) for r in rows]
            more, rows = len(rows) > limit, rows[:limit]
            return (rows[::-1] if backwards else rows), more

        return d.addCallback(page)

    # -- threads ----------------------------------------------------------

    _INSERT_THREAD = ("INSERT INTO threads (component, jid, thread, message_id, subject, created_at) "
                      "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (component, jid, message_id) DO NOTHING")

    def add_to_thread(self, component: str, jid: str, thread: str, message_id: str,
                      subject: str | None = None) -> defer.Deferred:
        return self._op(self._INSERT_THREAD, (component, jid, thread, message_id, subject, time.time()))

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

    # -- roster contacts (gateway/xmpp/roster.py) ----------------------------

    def roster_contact(self, component: str, jid: str, address: str) -> defer.Deferred:
        """How ``address`` was put in ``jid``'s roster ("roster" push, "subscription" request), or None."""
        d = self._run("SELECT method FROM roster_contacts WHERE component = ? AND jid = ? AND address = ?",
                      (component, jid, address))
        return d.addCallback(lambda rows: rows[0][0] if rows else None)

    def put_roster_contact(self, component: str, jid: str, address: str, method: str) -> defer.Deferred:
        return self._op("INSERT INTO roster_contacts (component, jid, address, method, created_at) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (component, jid, address) DO UPDATE SET "
                        "method = excluded.method", (component, jid, address, method, time.time()))

    def known_contacts(self, component: str, jid: str, limit: int = 1000) -> defer.Deferred:
        """
        Foreign addresses ``jid`` is known to have talked with: contacts put in
        the roster before, and recipients of messages whose ids are still kept
        (see retention). At most ``limit``, in address order.
        """
        d = self._run("SELECT address FROM roster_contacts WHERE component = ? AND jid = ? UNION "
                      "SELECT contact FROM message_ids WHERE component = ? AND jid = ? ORDER BY 1 LIMIT ?",
                      (component, jid, component, jid, limit))
        return d.addCallback(lambda rows: [r[0] for r in rows])

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

    # -- queue (outbox and inbox) -----------------------------------------

    _INSERT_QUEUE = (
        "INSERT INTO queue (id, component, jid, direction, payload, attempts, next_attempt, deadline, "
        "claimed_by, claimed_until, claim_token, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")

    def _insert_args(self, item: QueueItem, claimed: bool, now: float) -> tuple:
        if claimed:
            item.token, item.lease_until = new_token(), now + self.lease
        return (item.id, item.component, item.jid, item.direction, payloads.encode(item), item.attempts,
                now, item.deadline, self.claimant if claimed else None,
                item.lease_until if claimed else None, item.token if claimed else None, item.created_at)

    def enqueue(self, item: QueueItem, claimed: bool = True) -> defer.Deferred:
        """Store a message durably; by default already claimed by us, as we work on it at once."""
        return self._batch.add(self._INSERT_QUEUE, self._insert_args(item, claimed, time.time()), item.id)

    def enqueue_all(self, items: list[QueueItem], keys: list[str | None] | None = None,
                    threads: Iterable[tuple[str, str, str, str, str | None]] = ()) -> defer.Deferred:
        """
        Store several messages in one transaction: all of them or, on any
        failure, none. An item whose key (a foreign message id) was accepted
        before is left out; fires with which items were stored.

        ``threads``: (component, jid, thread, message_id, subject) records
        (add_to_thread) that belong to these messages, written in the same
        transaction, so the commit that acknowledges a mail also holds its
        thread record (no second fsync, and no record left behind by a mail
        that was never stored). They are idempotent, so a repeat writes none.
        """
        now = time.time()
        rows = [self._insert_args(item, True, now) for item in items]
        keys = keys or [None] * len(items)
        thread_rows = [(*record, now) for record in threads]

        def txn_insert(txn):
            if thread_rows:
                txn.executemany(self._sql(self._INSERT_THREAD), thread_rows)
            stored = []
            for item, key, args in zip(items, keys, rows):
                if key:
                    txn.execute(self._sql("INSERT INTO seen (component, key, created_at) VALUES (?, ?, ?) "
                                          "ON CONFLICT (component, key) DO NOTHING"), (item.component, key, now))
                    if txn.rowcount == 0:
                        stored.append(False)
                        continue
                txn.execute(self._sql(self._INSERT_QUEUE), args)
                stored.append(True)
            return stored

        return self._batch.add_call(txn_insert, [item.id for item in items])

    _QUEUE_COLUMNS = "id, component, jid, direction, payload, attempts, deadline, created_at, last_error, parked_at"

    def _item(self, row, token: str | None = None, lease_until: float = 0.0) -> QueueItem:
        return QueueItem(row[0], row[1], row[2], row[3], payloads.decode(row[4], row[0], row[2], row[1], row[7]),
                         row[5], row[6], row[7],
                         token=token, lease_until=lease_until, last_error=row[8], parked_at=row[9])

    def claim(self, component: str, direction: str, limit: int = 100,
              now: float | None = None) -> defer.Deferred:
        """Take up to ``limit`` due rows nobody holds a live lease on, oldest first."""
        now = time.time() if now is None else now
        token = new_token()
        lock = " FOR UPDATE SKIP LOCKED" if self.dialect == "postgresql" else ""
        query = (
            "UPDATE queue SET claimed_by = ?, claimed_until = ?, claim_token = ? WHERE id IN ("
            "SELECT id FROM queue WHERE component = ? AND direction = ? AND next_attempt <= ? "
            "AND parked_at IS NULL AND (claimed_until IS NULL OR claimed_until < ?) "
            f"ORDER BY next_attempt, created_at LIMIT ?{lock}) RETURNING {self._QUEUE_COLUMNS}")

        def txn_claim(txn):
            txn.execute(self._sql(query), (self.claimant, now + self.lease, token, component, direction,
                                           now, now, limit))
            items = [self._item(r, token, now + self.lease) for r in txn.fetchall()]
            return sorted(items, key=lambda i: i.created_at)

        return self._interaction(txn_claim)

    _FENCE = " WHERE id = ? AND claim_token = ?"

    def finish(self, item: QueueItem) -> defer.Deferred:
        """Remove a row whose work is done; fires with 0 if another process owns it now."""
        return self._batch.delete_row(item.id, item.token)

    def finish_all(self, items: list[QueueItem]) -> defer.Deferred:
        """finish() for many rows with one Deferred: fires with each row's count (1, or 0 if fenced out), in order."""
        return self._batch.delete_rows([(item.id, item.token) for item in items])

    def release(self, item: QueueItem, next_attempt: float, attempts: int, error: str | None = None) -> defer.Deferred:
        """Give a row back for a later attempt (by any process), with its payload (an adapter's progress)."""
        return self._batch.add("UPDATE queue SET claimed_by = NULL, claimed_until = NULL, claim_token = NULL, "
                               "next_attempt = ?, attempts = ?, last_error = ?, payload = ?" + self._FENCE,
                               (next_attempt, attempts, error, payloads.encode(item), item.id, item.token), item.id)

    def park(self, item: QueueItem, reason: str) -> defer.Deferred:
        """Set a row aside as a dead letter with its reason; the rows behind it flow on."""
        return self._batch.add("UPDATE queue SET claimed_by = NULL, claimed_until = NULL, claim_token = NULL, "
                               "parked_at = ?, last_error = ?" + self._FENCE,
                               (time.time(), reason[:1000], item.id, item.token), item.id)

    def checkpoint(self, item: QueueItem) -> defer.Deferred:
        """Store a changed payload (an adapter's progress on a multi-part send); fires with 0 if fenced out."""
        return self._batch.add("UPDATE queue SET payload = ?" + self._FENCE,
                               (payloads.encode(item), item.id, item.token), item.id)

    def owns(self, item: QueueItem, margin: float, now: float | None = None) -> bool:
        """Whether this process's lease on ``item`` is known, without asking the database, to last ``margin`` s more."""
        now = time.time() if now is None else now
        lease_until = item.lease_until
        if (item.id, item.token) in self.renewed_ids:
            lease_until = max(lease_until, self.renewed_until)
        return lease_until - now > margin

    def hold(self, item: QueueItem, now: float | None = None) -> defer.Deferred:
        """
        Extend our lease on ``item`` if it is still ours: the fence an attempt
        passes before it sends. Fires with False when the lease ran out or another
        process took the row over; the attempt must then not send.
        """
        now = time.time() if now is None else now
        until = now + self.lease

        def held(count):
            if count:
                item.lease_until = until
            return bool(count)

        return self._batch.add("UPDATE queue SET claimed_until = ?" + self._FENCE + " AND claimed_until >= ?",
                               (until, item.id, item.token, now), item.id).addCallback(held)

    def held_rows(self, component: str) -> dict[str, "QueueItem"]:
        """The dict an outbox keeps the rows it works on in; renew() extends exactly those."""
        return self._held.setdefault(component, {})

    def renew(self, now: float | None = None) -> defer.Deferred:
        """
        Extend the leases of the rows this process works on (queued, in flight
        or awaiting the inbound barrier) and its heartbeat. Rows whose lease
        already ran out are not renewed: another process may have them now.
        """
        now = time.time() if now is None else now
        until = now + self.lease
        ids = [i for held in self._held.values() for i in held]

        def txn_renew(txn):
            renewed = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ", ".join("?" for _ in chunk)
                txn.execute(self._sql(f"UPDATE queue SET claimed_until = ? WHERE claimed_by = ? AND claimed_until >= ? "
                                      f"AND id IN ({marks}) RETURNING id, claim_token"),
                            (until, self.claimant, now, *chunk))
                renewed.update(txn.fetchall())
            txn.execute(self._sql("UPDATE instances SET heartbeat = ? WHERE instance_id = ?"),
                        (now, self.instance_id))
            return frozenset(renewed)

        def renewed(pairs):
            # Exactly the (row, claim) pairs still ours when the update ran: one
            # another process took over meanwhile is not among them, however
            # late this ran.
            self.renewed_until, self.renewed_ids = until, pairs

        return self._interaction(txn_renew).addCallback(renewed)

    def settled(self) -> defer.Deferred:
        """Fires once every write queued so far has committed (so a claim sees them)."""
        return self._batch.settled()

    # -- instances --------------------------------------------------------

    def start_instance(self, host: str, pid: int) -> defer.Deferred:
        """
        Register this process under its instance id and take back the claims a
        dead earlier life of it left. Fails with InstanceConflict when a live
        process already uses the id, or (SQLite, one process only) the file.
        """
        now = time.time()

        def alive(row) -> bool:
            other_id, other_host, other_pid, heartbeat = row
            if heartbeat < now - self.lease:
                return False
            if other_host != host:
                return True
            if other_pid == pid:
                return False
            try:
                os.kill(other_pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True

        def txn_start(txn):
            if self.dialect == "postgresql":
                txn.execute("SELECT pg_advisory_xact_lock(7471002)")
            if self.shared:
                txn.execute(self._sql("SELECT instance_id, host, pid, heartbeat FROM instances WHERE instance_id = ?"),
                            (self.instance_id,))
            else:
                txn.execute("SELECT instance_id, host, pid, heartbeat FROM instances")
            for row in txn.fetchall():
                if alive(row):
                    what = (f"instance_id {row[0]!r}" if self.shared else f"the SQLite registry {self.path}")
                    raise InstanceConflict(
                        f"another gateway process (pid {row[2]} on {row[1]}) is using {what}; "
                        + ("give each process its own [gateway] instance_id" if self.shared else
                           "SQLite serves one process: use PostgreSQL to run several"))
            if self.shared:
                txn.execute(self._sql("DELETE FROM instances WHERE instance_id = ?"), (self.instance_id,))
                prefix = self.instance_id + "/"
                txn.execute(self._sql("UPDATE queue SET claimed_by = NULL, claimed_until = NULL, claim_token = NULL "
                                      "WHERE substr(claimed_by, 1, ?) = ?"), (len(prefix), prefix))
            else:
                # Only this process uses an SQLite file: every claim left is a dead one's.
                txn.execute("DELETE FROM instances")
                txn.execute("UPDATE queue SET claimed_by = NULL, claimed_until = NULL, claim_token = NULL")
            txn.execute(self._sql("INSERT INTO instances (instance_id, host, pid, heartbeat, started_at) "
                                  "VALUES (?, ?, ?, ?, ?)"), (self.instance_id, host, pid, now, now))

        return self._interaction(txn_start)

    def stop_instance(self) -> defer.Deferred:
        """A clean stop: the id is free at once (claims still held were released by their owners)."""
        return self._op("DELETE FROM instances WHERE instance_id = ?", (self.instance_id,))

    def live_instances(self) -> defer.Deferred:
        """Instance ids with a heartbeat younger than a lease (the processes serving now)."""
        d = self._run("SELECT instance_id FROM instances WHERE heartbeat >= ? ORDER BY instance_id",
                      (time.time() - self.lease,))
        return d.addCallback(lambda rows: [r[0] for r in rows])

    # -- queue administration (the `queue` command) -----------------------

    def list_queue(self, parked_only: bool = False, component: str | None = None) -> defer.Deferred:
        where, args = [], []
        if parked_only:
            where.append("parked_at IS NOT NULL")
        if component:
            where.append("component = ?")
            args.append(component)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        d = self._run(f"SELECT {self._QUEUE_COLUMNS} FROM queue{clause} ORDER BY created_at", args)
        return d.addCallback(lambda rows: [self._item(r) for r in rows])

    def retry_parked(self, ids: list[str]) -> defer.Deferred:
        """Put parked rows back in the queue, due now; fires with how many."""
        return self._ids_op("UPDATE queue SET parked_at = NULL, next_attempt = ?, attempts = 0 "
                            "WHERE parked_at IS NOT NULL AND id IN ({})", (time.time(),), ids)

    def drop(self, ids: list[str]) -> defer.Deferred:
        """Delete rows for good (parked ones, by an operator); fires with how many."""
        return self._ids_op("DELETE FROM queue WHERE parked_at IS NOT NULL AND id IN ({})", (), ids)

    def _ids_op(self, query: str, args: tuple, ids: list[str]) -> defer.Deferred:
        if not ids:
            return defer.succeed(0)
        marks = ", ".join("?" for _ in ids)
        return self._interaction(_rowcount, self._sql(query.format(marks)), (*args, *ids))

    def queue_depth(self, component: str) -> defer.Deferred:
        """Rows waiting per direction, and parked rows ("parked")."""
        d = self._run("SELECT CASE WHEN parked_at IS NULL THEN direction ELSE 'parked' END, COUNT(*) FROM queue "
                      "WHERE component = ? GROUP BY 1", (component,))
        return d.addCallback(lambda rows: {"out": 0, "in": 0, "parked": 0} | {r[0]: r[1] for r in rows})

    def queue_oldest(self, component: str) -> defer.Deferred:
        """Creation time of the oldest row per direction (and "parked"), for the age gauges."""
        d = self._run("SELECT CASE WHEN parked_at IS NULL THEN direction ELSE 'parked' END, MIN(created_at) "
                      "FROM queue WHERE component = ? GROUP BY 1", (component,))
        return d.addCallback(lambda rows: {r[0]: r[1] for r in rows})

    # -- export / import --------------------------------------------------

    def export(self) -> defer.Deferred:
        """
        Registrations as JSON-ready dicts; secrets stay sealed (import needs
        the same key; a passphrase key also this registry's ``kdf_salt``).
        """
        d = self._run("SELECT component, jid, foreign_id, settings, secrets, subscribed, created_at "
                      "FROM registrations ORDER BY component, jid")
        return d.addCallback(lambda rows: [
            {"component": r[0], "jid": r[1], "foreign_id": r[2], "settings": json.loads(r[3]),
             "sealed_secrets": r[4], "subscribed": bool(r[5]), "created_at": r[6]} for r in rows])

    @defer.inlineCallbacks
    def import_(self, rows: list[dict[str, Any]], kdf_salt: bytes | None = None):
        """
        Store exported rows. Their tokens must open with our keys, derived
        with the exporting registry's salt when given (a passphrase key
        stretched with another salt is another key): such tokens are
        re-sealed for this registry.
        """
        source = self.box
        if kdf_salt and kdf_salt != self.kdf_salt:
            source = yield threads.deferToThread(SecretBox, self._keys[0], self._keys[1], kdf_salt)
        count = 0
        for row in rows:
            sealed = row.get("sealed_secrets")
            secrets = source.open(sealed)  # fails early on a foreign key
            if sealed and source is not self.box:
                try:
                    self.box.open(sealed)
                except SecretsUnreadable:
                    sealed = self.box.seal(secrets)
            yield self._put_sealed(row["component"], row["jid"], row.get("foreign_id"),
                                   row.get("settings", {}), sealed,
                                   row.get("subscribed", True), row.get("created_at", time.time()))
            count += 1
        return count

    # -- key rotation -----------------------------------------------------

    def sealed_batch(self, after: tuple[str, str] = ("", ""), limit: int = 200) -> defer.Deferred:
        """(component, jid, token) of rows with secrets, in key order after ``after``."""
        return self._run("SELECT component, jid, secrets FROM registrations WHERE secrets IS NOT NULL "
                         "AND (component > ? OR (component = ? AND jid > ?)) ORDER BY component, jid LIMIT ?",
                         (after[0], after[0], after[1], limit))

    def replace_sealed(self, updates: list[tuple[str, str, str, str]]) -> defer.Deferred:
        """
        For each (component, jid, old token, new token), one transaction: the
        new token only where the row still holds the old one, so a change the
        gateway made meanwhile is never overwritten. Fires with how many rows
        were replaced.
        """
        query = self._sql("UPDATE registrations SET secrets = ? WHERE component = ? AND jid = ? AND secrets = ?")

        def work(txn):
            return sum(_rowcount(txn, query, (new, component, jid, old)) for component, jid, old, new in updates)

        return self._interaction(work) if updates else defer.succeed(0)

    @defer.inlineCallbacks
    def rotate_secrets(self, batch: int = 200):
        """
        Re-seal every row's secrets with the current key (MultiFernet.rotate),
        a batch per transaction, safe next to a running gateway and idempotent.
        Fires with counts and the (component, jid) of rows no key opens (left as they are).
        """
        result = {"rotated": 0, "current": 0, "changed": 0, "unreadable": []}
        after = ("", "")
        while True:
            rows = yield self.sealed_batch(after, batch)
            if not rows:
                return result
            after = (rows[-1][0], rows[-1][1])
            updates = []
            for component, jid, token in rows:
                if self.box.is_current(token):
                    result["current"] += 1
                    continue
                try:
                    updates.append((component, jid, token, self.box.rotate(token)))
                except SecretsUnreadable:
                    result["unreadable"].append((component, jid))
            replaced = yield self.replace_sealed(updates)
            result["rotated"] += replaced
            result["changed"] += len(updates) - replaced


@defer.inlineCallbacks
def open_registry(url: str, secret_key: str, instance_id: str = "local", lease: float = 120.0,
                  old_keys: Iterable[str] = ()):
    registry = SQLRegistry(url, secret_key, instance_id, lease, old_keys)
    yield registry.open()
    return registry
