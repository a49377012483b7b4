"""
One stanza-id per room line: the id a client sees live is the one the room
archive keeps (MAM, history on join), also for a line the bridge writes itself
(a reaction from the network to a message it does not know, said in words).
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted

from gateway.model import RoomEvent
from tests.unit.test_room_history import ROOM, PanelAdapter, joined, room_messages
from tests.unit.wire import Wire, find


@pytest.fixture
def panel(tmp_path):
    w = pytest_twisted.blockon(Wire(os.path.join(tmp_path, "reg.sqlite"), adapter=PanelAdapter).start())
    yield w
    w.stop()


@pytest_twisted.inlineCallbacks
def test_a_reaction_said_in_words_is_archived_under_the_id_it_was_sent_with(panel):
    yield panel.register()
    adapter = panel.bridge.adapter
    yield joined(panel)
    # A reaction to a message the gateway never relayed: it becomes a line with a body.
    adapter.context.room_event(RoomEvent(adapter.context.component, "alice@example.org", ["phone"], "panel-a",
                                         "message", nick="bob", ref="unknown-msgid", reactions=["\N{THUMBS UP SIGN}"]))
    live = [m for m in room_messages((yield panel.quiet(0.2))) if find(m, "body") is not None]
    assert len(live) == 1
    sid = find(live[0], "stanza-id")["id"]

    yield panel.iq("set", "<query xmlns='urn:xmpp:mam:2' queryid='x'/>", to=ROOM)
    archived = [find(r, "result")["id"] for r in room_messages(panel.sent())]
    assert archived == [sid]


@pytest_twisted.inlineCallbacks
def test_no_stanza_id_goes_out_that_the_archive_does_not_know(panel):
    # Clients catch up with MAM "after the last stanza-id seen": an id the archive does not
    # have (on a typing notification) makes that query fail with item-not-found.
    yield panel.register()
    adapter = panel.bridge.adapter
    yield joined(panel)
    adapter.say("alice@example.org", ["phone"], "panel-a", "bob", "first")
    adapter.context.room_event(RoomEvent(adapter.context.component, "alice@example.org", ["phone"], "panel-a",
                                         "message", nick="bob", chat_state="composing"))
    live = room_messages((yield panel.quiet(0.2)))
    assert len(live) == 2
    last = [find(m, "stanza-id")["id"] for m in live if find(m, "stanza-id") is not None][-1]

    reply = yield panel.iq("set", "<query xmlns='urn:xmpp:mam:2' queryid='x'><set xmlns='http://jabber.org/protocol/rsm'>"
                                  f"<after>{last}</after></set></query>", to=ROOM)
    assert reply["type"] == "result"


@pytest_twisted.inlineCallbacks
def test_a_reaction_with_the_networks_id_carries_no_stanza_id_the_archive_lacks(panel):
    # An IRC TAGMSG reaction has a msgid of its own; the archive keeps lines, not reactions.
    yield panel.register()
    adapter = panel.bridge.adapter
    yield joined(panel)
    component = adapter.context.component
    adapter.context.room_event(RoomEvent(component, "alice@example.org", ["phone"], "panel-a", "message",
                                         nick="bob", body="first", stanza_id="m1", foreign_id="m1"))
    adapter.context.room_event(RoomEvent(component, "alice@example.org", ["phone"], "panel-a", "message",
                                         nick="carol", ref="m1", reactions=["\N{THUMBS UP SIGN}"], stanza_id="m2"))
    live = room_messages((yield panel.quiet(0.2)))
    assert len(live) == 2 and find(live[1], "reactions")["id"] == "m1"
    last = [find(m, "stanza-id")["id"] for m in live if find(m, "stanza-id") is not None][-1]

    reply = yield panel.iq("set", "<query xmlns='urn:xmpp:mam:2' queryid='x'><set xmlns='http://jabber.org/protocol/rsm'>"
                                  f"<after>{last}</after></set></query>", to=ROOM)
    assert reply["type"] == "result"
