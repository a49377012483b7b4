"""
Stored queue payloads in a compact encoding (gateway/registry/payloads.py):
no spaces, and without the copies of what the row's own columns hold (id,
user, component, creation time), which were about a third of a message's
row. Every payload comes back exactly as it went in, on SQLite and a real
PostgreSQL, and rows written by the old encoder (plain ``json.dumps``) are
still read as they were.
"""

import json
import sqlite3

import pytest
import pytest_twisted
from hypothesis import given, settings, strategies as st

from gateway.model import InboundMessage, OutboundMessage
from gateway.registry import QueueItem, SQLRegistry
from gateway.registry.crypto import SecretBox
from tests.unit.registries import open_either

KEY = SecretBox.generate()
COMP = "sms.example.org"


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, fresh_dir):
    return open_either(request, fresh_dir, KEY, "pay", "test-pay")


def row_for(payload: dict, direction: str = "out", **columns) -> QueueItem:
    return QueueItem(id=columns.get("id", payload.get("id", "row-1")), component=columns.get("component", COMP),
                     jid=columns.get("jid", payload.get("user", "u@example.org")), direction=direction,
                     payload=payload, attempts=0, deadline=10**12,
                     created_at=columns.get("created_at", payload.get("created_at", 1000.0)))


HOSTILE_TEXT = ["", "\x00", "\ud800", "\udfff lone", "é" * 3000, "\U0001f600", '"\\/\b\f\n\r\t', "</message>",
                "A" * 100_000, "{\"id\": 1}", "[1, {}]"]


def messages():
    yield OutboundMessage(component=COMP, user="alice@example.org", recipient="+15551234567", body="hi")
    yield OutboundMessage(component=COMP, user="alice@example.org", recipient="+1555", body="x",
                          attachments=["https://a/b"], reactions=["👍"], progress={"sent": [1, 2]})
    yield InboundMessage(component=COMP, user="bob@example.org", sender="+15557654321", body="yo", timestamp=5.5)
    for text in HOSTILE_TEXT:
        yield OutboundMessage(component=COMP, user="a@example.org", recipient=text or "r", body=text,
                              subject=text, thread=text)


@pytest_twisted.inlineCallbacks
def test_every_payload_comes_back_as_it_went_in(registry):
    sent = list(messages())
    for m in sent:
        yield registry.enqueue(row_for(m.to_dict(), "out" if isinstance(m, OutboundMessage) else "in"),
                               claimed=False)
    back = (yield registry.claim(COMP, "out", limit=100)) + (yield registry.claim(COMP, "in", limit=100))
    by_id = {i.id: i.payload for i in back}
    assert len(by_id) == len(sent)
    for m in sent:
        assert by_id[m.id] == m.to_dict()
        assert type(m).from_dict(by_id[m.id]) == m


@pytest_twisted.inlineCallbacks
def test_a_payload_whose_fields_differ_from_its_columns_keeps_them(registry):
    # Not a message at all, or one whose fields are not the row's: nothing may be put back that
    # was not there, nor anything lost that was.
    odd = [{"id": "other", "user": "someone@else", "component": "x", "created_at": 1.0},
           {"body": "no copies at all"},
           {"id": 7, "user": None, "created_at": "1000.0"},
           {"created_at": 1000.0, "nested": {"id": "row-1", "user": "u@example.org"}},
           {"id": "row-1"}, {}]
    for n, payload in enumerate(odd):
        yield registry.enqueue(QueueItem(id=f"odd-{n}", component=COMP, jid="u@example.org", direction="out",
                                         payload=payload, attempts=0, deadline=10**12, created_at=1000.0 + n),
                               claimed=False)
    back = yield registry.claim(COMP, "out", limit=100)
    assert {i.id: i.payload for i in back} == {f"odd-{n}": p for n, p in enumerate(odd)}


@pytest_twisted.inlineCallbacks
def test_rows_written_by_the_old_encoder_are_read_as_before(fresh_dir):
    path = f"{fresh_dir}/old.sqlite"
    reg = SQLRegistry(f"sqlite:///{path}", KEY, instance_id="test-pay", lease=60)
    yield reg.open()
    try:
        old = [m.to_dict() for m in messages()] + [{"id": "odd", "user": "x"}, {}]
        conn = sqlite3.connect(path)
        for n, payload in enumerate(old):
            conn.execute("INSERT INTO queue (id, component, jid, direction, payload, attempts, next_attempt, "
                         "deadline, created_at) VALUES (?, ?, ?, 'out', ?, 0, 0, ?, ?)",
                         (f"old-{n}", COMP, "u@example.org", json.dumps(payload), 10**12, 1000.0 + n))
        conn.commit()
        conn.close()
        back = yield reg.claim(COMP, "out", limit=100)
        assert [i.payload for i in back] == old
        listed = yield reg.list_queue(component=COMP)      # the `queue` command reads them too
        assert [i.payload for i in listed] == old
    finally:
        reg.close()


@pytest_twisted.inlineCallbacks
def test_a_message_row_is_a_third_smaller(fresh_dir):
    path = f"{fresh_dir}/size.sqlite"
    reg = SQLRegistry(f"sqlite:///{path}", KEY, instance_id="test-pay", lease=60)
    yield reg.open()
    try:
        m = OutboundMessage(component=COMP, user="alice@example.org", recipient="+15551234567", body="hi")
        yield reg.enqueue(row_for(m.to_dict()))
        stored = sqlite3.connect(path).execute("SELECT payload FROM queue").fetchone()[0]
    finally:
        reg.close()
    old = json.dumps(m.to_dict())
    assert len(stored) <= len(old) * 2 / 3, (stored, old)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
column_keys = st.sampled_from(["id", "user", "component", "created_at", "body", "x"])


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(column_keys | st.text(max_size=8), json_values | st.sampled_from(
    ["row-1", "u@example.org", COMP, 1000.0, 1000, True, -0.0]), max_size=8))
def test_random_payloads_round_trip_through_the_encoding(payload):
    from gateway.registry import payloads
    item = row_for(payload, id="row-1", jid="u@example.org", component=COMP, created_at=1000.0)
    text = payloads.encode(item)
    back = payloads.decode(text, item.id, item.jid, item.component, item.created_at)
    assert back == payload
    # Same types too (1000 is not 1000.0; True is not 1), as json.loads(json.dumps(...)) gives.
    assert json.dumps(back, sort_keys=True) == json.dumps(json.loads(json.dumps(payload)), sort_keys=True)
