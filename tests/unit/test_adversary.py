"""
Hostile input found by the adversary review: each test failed before its fix.
Real stream, parser, handlers, bridge and registry on an in-memory transport
(tests/unit/wire.py), with the group-chat adapter of test_room_history.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted

from tests.unit.test_room_history import MAM, ROOM, RSM, PanelAdapter, room_messages, text
from tests.unit.wire import Wire, error_of, find


@pytest.fixture
def panel(tmp_path):
    w = pytest_twisted.blockon(Wire(os.path.join(tmp_path, "reg.sqlite"), adapter=PanelAdapter).start())
    yield w
    w.stop()


@pytest_twisted.inlineCallbacks
def _joined(panel):
    yield panel.register()
    panel.feed(f"<presence from='alice@example.org/phone' to='{ROOM}/alice'><x xmlns='http://jabber.org/protocol/muc'/>"
               "</presence>")
    yield panel.wait(lambda el: el.name == "message" and find(el, "subject") is not None)


@pytest_twisted.inlineCallbacks
def test_mam_max_of_unicode_digits_is_bad_request_not_silence(panel):
    """'²' is str.isdigit() but no int(): the query was left unanswered (the client waits for ever)."""
    yield _joined(panel)
    for n, value in enumerate(["\u00b2", "\u0663", "\uff11"]):      # superscript two, Arabic-Indic three, fullwidth one
        reply = yield panel.iq("set", f"<query xmlns='{MAM}'><set xmlns='{RSM}'><max>{value}</max></set></query>",
                               to=ROOM, iq_id=f"u{n}")
        assert reply["type"] == "error" and error_of(reply)[0] == "bad-request", value


@pytest_twisted.inlineCallbacks
def test_history_with_unicode_digits_still_joins(panel):
    """<history maxstanzas='²'/>: the join was never answered; now the value is as if not given."""
    yield _joined(panel)
    panel.bridge.adapter.say("alice@example.org", ["phone"], "panel-a", "bob", "kept")
    yield panel.quiet(0.1)
    panel.feed(f"<presence from='alice@example.org/laptop' to='{ROOM}/alice'><x xmlns='http://jabber.org/protocol/muc'>"
               "<history maxstanzas='\u00b2' maxchars='\u00b9' seconds='\u00b3'/></x></presence>")
    got = yield panel.quiet(0.3)
    laptop = [text(m) for m in room_messages(got) if m["to"].endswith("/laptop")]
    assert laptop == ["body:kept", "subject:the topic"]
