"""
Purges the registry's bookkeeping that would otherwise grow for ever: which
network id each sent message got, email thread membership, per-user daily
counters, foreign ids remembered against replays, and the room archive (by
age, and the oldest beyond ``room_archive_rows`` per user and room). Users'
registrations and queued messages are never touched here.

Every table is purged in batches of ``retention.batch`` rows, one short
transaction each, so a large backlog of old rows never holds the database
(or, on SQLite, the one writer) for long. With several processes on one
PostgreSQL registry each runs the job; two at once only race to delete the
same rows. The first run comes a random part of the interval after start, so
processes started together do not purge together.
"""

from __future__ import annotations

import datetime
import random
import time

from prometheus_client import Counter
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from gateway import metrics

log = Logger(namespace="gateway.retention")

PURGED = Counter("xmpp_gateway_retention_purged", "Old bookkeeping rows deleted by the retention job.",
                 ["table"], registry=metrics.REGISTRY)

DAY = 86400.0


class Retention(service.Service):
    def __init__(self, registry, options: dict, clock):
        self.registry = registry
        self.options = options
        self.clock = clock
        self._loop: task.LoopingCall | None = None
        self._first = None
        self._running: defer.Deferred | None = None

    def startService(self):
        super().startService()
        interval = self.options["interval"]
        self._first = self.clock.callLater(random.uniform(0.1, 1.0) * interval, self._start_loop, interval)

    def _start_loop(self, interval: float) -> None:
        self._first = None
        self._loop = task.LoopingCall(self.run)
        self._loop.clock = self.clock
        self._loop.start(interval, now=True).addErrback(lambda f: log.failure("retention loop stopped", f))

    def bounds(self, now: float) -> dict[str, float | str]:
        o = self.options
        counters_day = datetime.datetime.fromtimestamp(now - o["counters_days"] * DAY, datetime.timezone.utc)
        bounds = {"message_ids": now - o["message_ids_days"] * DAY, "threads": now - o["threads_days"] * DAY,
                  "counters": counters_day.strftime("%Y-%m-%d"), "seen": now - o["seen_days"] * DAY}
        if o.get("room_archive_days"):
            # The room archive's times are integer microseconds.
            bounds["room_archive"] = int((now - o["room_archive_days"] * DAY) * 1_000_000)
        return bounds

    def _purges(self, now: float):
        """(name, a call deleting up to one batch and firing with how many) for every purge of a pass."""
        batch = self.options["batch"]
        for table, bound in self.bounds(now).items():
            yield table, lambda table=table, bound=bound: self.registry.purge(table, bound, batch)
        if self.options.get("room_archive_rows"):
            # The newest room_archive_rows of each user's room stay; older ones go.
            yield "room_archive_rows", lambda: self.registry.purge_room_archive_rows(
                self.options["room_archive_rows"], batch)

    @defer.inlineCallbacks
    def run(self):
        """One pass over every table; fires with {table: rows deleted}. A failure is logged, never fatal."""
        self._running = defer.Deferred()
        purged: dict[str, int] = {}
        try:
            for table, purge in self._purges(time.time()):
                if not self.running:
                    break
                purged[table] = 0
                while self.running:
                    n = yield purge()
                    purged[table] += n
                    PURGED.labels(table).inc(n)
                    if n < self.options["batch"]:
                        break
            if any(purged.values()):
                log.info("retention: purged {summary}",
                         summary=", ".join(f"{n} {t}" for t, n in purged.items() if n))
        except Exception:
            log.failure("retention: purging old rows failed; next try in {s} s", s=self.options["interval"])
        finally:
            done, self._running = self._running, None
            done.callback(None)
        return purged

    def stopService(self):
        super().stopService()
        if self._first is not None and self._first.active():
            self._first.cancel()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        # A batch under way finishes before the registry closes.
        if self._running is not None:
            d = defer.Deferred()
            self._running.addBoth(lambda _: d.callback(None))
            return d
