"""
Retention against the real gateway process: bookkeeping rows older than their
configured age are purged while the gateway runs; young ones, and a message id
still awaiting its SMS verdict, stay. Without it these tables only grow (one
row per message sent, per email thread member, per user-day, per webhook).
"""

from __future__ import annotations

import sqlite3
import time

from gateway.testing.process import wait_for
from tests.hostile.conftest import start_gateway

DAY = 86400


def rows(db: str, query: str) -> list:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(query).fetchall()


def test_old_bookkeeping_is_purged_while_the_gateway_runs(hostile_prosody, fresh_dir):
    gateway = start_gateway(hostile_prosody, fresh_dir, "hretain", sections={"retention": {"interval": 1.0}})
    gateway.stop()
    now = time.time()
    with sqlite3.connect(gateway.db) as conn:
        for n in range(2500):                                         # more than one batch
            conn.execute("INSERT INTO message_ids VALUES ('c', 'u@localhost', ?, ?, '+1555', NULL, 0, ?, NULL)",
                         (f"old{n}", f"F{n}", now - 31 * DAY))
        conn.execute("INSERT INTO message_ids VALUES ('c', 'u@localhost', 'young', 'Fy', '+1555', NULL, 0, ?, NULL)",
                     (now - DAY,))
        conn.execute("INSERT INTO message_ids VALUES ('c', 'u@localhost', 'waiting', 'Fw', '+1555', NULL, 0, ?, ?)",
                     (now - 31 * DAY, now + DAY))
        conn.execute("INSERT INTO threads VALUES ('c', 'u@localhost', 't', '<old@x>', NULL, ?)", (now - 91 * DAY,))
        conn.execute("INSERT INTO threads VALUES ('c', 'u@localhost', 't', '<young@x>', NULL, ?)", (now - DAY,))
        conn.execute("INSERT INTO counters VALUES ('c', 'u@localhost', 'sms', '2020-01-01', 3)")
        conn.execute("INSERT INTO counters VALUES ('c', 'u@localhost', 'sms', ?, 3)",
                     (time.strftime("%Y-%m-%d", time.gmtime(now)),))
        conn.execute("INSERT INTO seen VALUES ('c', 'old', ?)", (now - 8 * DAY,))
        conn.execute("INSERT INTO seen VALUES ('c', 'young', ?)", (now - DAY,))
    gateway.start()
    try:
        wait_for(lambda: rows(gateway.db, "SELECT count(*) FROM seen")[0][0] == 1, 60, "the retention job",
                 gateway.proc)
        assert rows(gateway.db, "SELECT xmpp_id FROM message_ids ORDER BY xmpp_id") == [("waiting",), ("young",)]
        assert rows(gateway.db, "SELECT message_id FROM threads") == [("<young@x>",)]
        assert [r[0] for r in rows(gateway.db, "SELECT period FROM counters")] == [
            time.strftime("%Y-%m-%d", time.gmtime(now))]
        assert rows(gateway.db, "SELECT key FROM seen") == [("young",)]
        assert "retention: purged 2500 message_ids, 1 threads, 1 counters, 1 seen" in gateway.log()
    finally:
        gateway.stop()
