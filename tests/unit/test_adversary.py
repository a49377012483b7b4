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


def test_a_reused_message_id_does_not_grow_the_reference_memory():
    """
    A client (or a hostile user) reusing one XMPP id: each message replaced the
    record but left its network reference behind in the reverse index, so that
    index grew by one per message without bound (while the message count said 1),
    and a reply from the network to the old message was put under the new one.
    """
    from gateway.bridge.conversations import Conversations
    from gateway.model import InboundMessage, OutboundMessage

    conv = Conversations(object())
    for n in range(500):
        message = OutboundMessage(component="c", user="alice@example.org", recipient="#chan%irc", body=f"m{n}",
                                  xmpp_id="same", kind="groupchat")
        assert conv.prepare(message, None) is message
        conv.learn("alice@example.org", "#chan%irc", "same", f"msgid-{n}")
    assert len(conv._by_ref[("alice@example.org", "#chan%irc")]) == 1
    assert conv._count == 1
    # A reply from the network to an earlier line is not taken for one to the latest.
    reply = InboundMessage(component="c", user="alice@example.org", sender="#chan%irc", body="re", ref="msgid-3")
    conv._resolve(reply, "alice@example.org", "#chan%irc")
    assert reply.reply_to is None
