"""
The fault ledger's one excuse for a message that never came back: the dead
gateway's queue did not hold it and it was sent within ``UNSTORED_WINDOW``
before the kill (XEP-0114 has no acknowledgements). Anything else missing is lost.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

from tests.faults.ledger import UNSTORED_WINDOW, Ledger


class FakeClient:
    def __init__(self):
        self.n = 0

    def send_chat(self, to: str, text: str) -> str:
        self.n += 1
        return f"id{self.n}"


def queue_db(path: str, bodies: list[str]) -> str:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE queue (id TEXT PRIMARY KEY, component TEXT, jid TEXT, direction TEXT, "
                     "payload TEXT, attempts INTEGER, next_attempt REAL, deadline REAL, claimed_by TEXT, "
                     "claimed_until REAL, last_error TEXT, created_at REAL)")
        for n, text in enumerate(bodies):
            conn.execute("INSERT INTO queue VALUES (?, 'c', 'u@x', 'out', ?, 0, 0, 0, NULL, NULL, NULL, 0)",
                         (f"r{n}", json.dumps({"body": text})))
    conn.close()
    return path


def test_only_recent_messages_missing_from_the_queue_are_excused(tmp_path, monkeypatch):
    ledger, client = Ledger(), FakeClient()
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    ledger.send(client, "c", "old-gone")              # sent long before the kill, not queued: lost
    ledger.send(client, "c", "queued")                # held by the queue, never delivered: lost
    clock[0] += UNSTORED_WINDOW + 5
    ledger.send(client, "c", "delivered")
    ledger.send(client, "c", "just-sent")             # sent just before the kill, not queued: excused
    ledger.received["delivered"] += 1
    ledger.ids["delivered"] = {"x"}
    clock[0] += 0.05
    ledger.killed(queue_db(os.path.join(tmp_path, "q.sqlite"), ["queued"]))
    report = ledger.report()
    assert report["not stored when killed"] == 1
    assert report["lost"] == 2
    assert sorted(ledger.missing()) == ["old-gone", "queued"]
