"""
The room archive is core: a third-party group-chat adapter (IGroupChat only, no
IRoomArchive) gets stanza-ids, MAM and history on join without knowing XEPs.
History goes out before the subject whether the adapter's subject comes before
the archive is read (held) or after (sent at once), and what the room says
meanwhile follows it, once.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface import implementer

from gateway.adapters.echo import EchoAdapter
from gateway.interfaces import IGroupChat
from gateway.model import RoomEvent
from tests.unit.wire import DOMAIN, Wire, find

ROOM = f"panel-a@{DOMAIN}"


@implementer(IGroupChat)
class PanelAdapter(EchoAdapter):
    """Rooms whose join completes when the test says (``subject_now`` or ``finish``)."""

    room_identity_type = "text"
    occupants_visible = False
    subject_now = True

    def __init__(self, options, context):
        super().__init__(options, context)
        self.joined: dict[tuple[str, str], str] = {}

    def is_room(self, address):
        return address.startswith("panel-")

    def occupant_address(self, room, nick):
        return f"{nick}.{room}"

    def room_name(self, room):
        return room

    def say(self, user, resources, room, nick, body):
        self.context.room_event(RoomEvent(self.context.component, user, list(resources), room, "message",
                                          nick=nick, body=body))

    def finish(self, user, resource, room, nick):
        self.context.room_event(RoomEvent(self.context.component, user, [resource], room, "presence", nick=nick,
                                          own=True, joined=True))
        self.context.room_event(RoomEvent(self.context.component, user, [resource], room, "subject",
                                          subject="the topic"))

    def join(self, registration, resource, room, nick, password):
        self.joined[(registration.jid, resource)] = nick
        if self.subject_now:
            self.finish(registration.jid, resource, room, nick)
        return defer.succeed(None)

    def leave(self, user, resource, room):
        self.joined.pop((user, resource), None)
        return defer.succeed(None)

    def joined_nick(self, user, resource, room):
        return self.joined.get((user, resource))


@pytest.fixture
def panel(tmp_path):
    w = pytest_twisted.blockon(Wire(os.path.join(tmp_path, "reg.sqlite"), adapter=PanelAdapter).start())
    yield w
    w.stop()


def room_messages(stanzas):
    return [el for el in stanzas if el.name == "message" and el["from"].startswith(ROOM)]


def text(el):
    for name in ("subject", "body"):
        child = find(el, name)
        if child is not None:
            return f"{name}:{child}"
    return None


def joined(panel):
    """alice's phone joins the panel's room; fires at the subject, the join's last stanza."""
    panel.feed(f"<presence from='alice@example.org/phone' to='{ROOM}/alice'><x xmlns='http://jabber.org/protocol/muc'/>"
               "</presence>")
    return panel.wait(lambda el: el.name == "message" and find(el, "subject") is not None)


@pytest_twisted.inlineCallbacks
def test_a_third_party_room_gets_stanza_ids_mam_and_history(panel):
    yield panel.register()
    adapter = panel.bridge.adapter
    yield joined(panel)
    for n in range(3):
        adapter.say("alice@example.org", ["phone"], "panel-a", "bob", f"m{n}")
    live = room_messages((yield panel.quiet(0.2)))
    sids = [find(m, "stanza-id") for m in live]
    assert [s["by"] for s in sids] == [ROOM] * 3 and len({s["id"] for s in sids}) == 3

    reply = yield panel.iq("set", "<query xmlns='urn:xmpp:mam:2' queryid='x'/>", to=ROOM)
    results = room_messages(panel.sent())
    assert reply["type"] == "result" and find(reply, "fin")["complete"] == "true"
    assert [find(r, "result")["id"] for r in results] == [s["id"] for s in sids]



@pytest_twisted.inlineCallbacks
def test_history_comes_before_the_subject_and_what_follows_it_once(panel):
    yield panel.register()
    adapter = panel.bridge.adapter
    yield joined(panel)
    for n in range(3):
        adapter.say("alice@example.org", ["phone"], "panel-a", "bob", f"m{n}")
    yield panel.quiet(0.2)

    # Held: the subject comes at once, with a line after it, before the archive is read.
    adapter.subject_now = False
    panel.feed(f"<presence from='alice@example.org/laptop' to='{ROOM}/alice'>"
               "<x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='2'/></x></presence>")
    adapter.finish("alice@example.org", "laptop", "panel-a", "alice")
    adapter.say("alice@example.org", ["phone", "laptop"], "panel-a", "bob", "live")
    stanzas = room_messages((yield panel.quiet(0.3)))
    laptop = [text(m) for m in stanzas if m["to"].endswith("/laptop")]
    assert laptop == ["body:m1", "body:m2", "subject:the topic", "body:live"]
    history = [m for m in stanzas if m["to"].endswith("/laptop")][:2]
    assert all(find(m, "delay") is not None and find(m, "stanza-id")["by"] == ROOM for m in history)
    assert [text(m) for m in stanzas if m["to"].endswith("/phone")] == ["body:live"]    # never held

    # Read first: the subject comes later, and the history goes right before it.
    panel.feed(f"<presence from='alice@example.org/tablet' to='{ROOM}/alice'>"
               "<x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='1'/></x></presence>")
    yield panel.quiet(0.3)
    adapter.finish("alice@example.org", "tablet", "panel-a", "alice")
    tablet = [text(m) for m in room_messages((yield panel.quiet(0.2))) if m["to"].endswith("/tablet")]
    assert tablet == ["body:live", "subject:the topic"]


def test_the_irc_adapter_declares_its_history_length():
    from zope.interface.verify import verifyClass

    from gateway.adapters.irc import IRCAdapter
    from gateway.interfaces import IRoomArchive

    assert IRoomArchive.implementedBy(IRCAdapter) and verifyClass(IRoomArchive, IRCAdapter)


MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"


@pytest_twisted.inlineCallbacks
def test_hostile_archive_queries_and_history_limits(panel):
    """Bad input gets bad-request and changes nothing; odd <history/> values are as if not given."""
    from tests.unit.wire import error_of

    yield panel.register()
    adapter = panel.bridge.adapter
    yield joined(panel)
    adapter.say("alice@example.org", ["phone"], "panel-a", "bob", "kept")
    yield panel.quiet(0.1)
    bad = [
        f"<query xmlns='{MAM}'><set xmlns='{RSM}'><max>-1</max></set></query>",
        f"<query xmlns='{MAM}'><set xmlns='{RSM}'><max>99999999999</max></set></query>",
        f"<query xmlns='{MAM}'><set xmlns='{RSM}'><after>a</after><before>b</before></set></query>",
        f"<query xmlns='{MAM}'><set xmlns='{RSM}'><after/></set></query>",
        f"<query xmlns='{MAM}' queryid='{'q' * 300}'/>",
        f"<query xmlns='{MAM}'><x xmlns='jabber:x:data' type='submit'><field var='start'>"
        "<value>2026-13-45T00:00:00Z</value></field></x></query>",
        f"<query xmlns='{MAM}'><x xmlns='jabber:x:data' type='submit'><field var='start'>"
        "<value>2026-12-03T05:40:00</value></field></x></query>",                 # no time zone
        f"<query xmlns='{MAM}'><x xmlns='jabber:x:data' type='submit'><field var='with'>"
        "<value>bob@example.org</value></field></x></query>",
        f"<query xmlns='{MAM}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
        "<value>urn:example</value></field></x></query>",
    ]
    for n, payload in enumerate(bad):
        reply = yield panel.iq("set", payload, to=ROOM, iq_id=f"bad{n}")
        assert reply["type"] == "error" and error_of(reply)[0] == "bad-request", payload
    assert not room_messages(panel.sent())
    # A page of 1000 is cut to the gateway's bound (100); the archive is unchanged.
    reply = yield panel.iq("set", f"<query xmlns='{MAM}' queryid='ok'><set xmlns='{RSM}'><max>1000</max></set>"
                                  "</query>", to=ROOM, iq_id="ok")
    assert reply["type"] == "result" and find(reply, "fin")["complete"] == "true"
    results = room_messages(panel.sent())
    assert len(results) == 1 and find(results[0], "result", "forwarded", "message", "body") is not None

    # <history/> with values that are none: the default applies (the one message).
    panel.feed(f"<presence from='alice@example.org/laptop' to='{ROOM}/alice'><x xmlns='http://jabber.org/protocol/muc'>"
               "<history maxstanzas='-5' maxchars='lots' seconds='1e9' since='yesterday'/></x></presence>")
    got = yield panel.quiet(0.3)
    laptop = [text(m) for m in room_messages(got) if m["to"].endswith("/laptop")]
    assert laptop == ["body:kept", "subject:the topic"]


@pytest_twisted.inlineCallbacks
def test_a_page_is_at_most_100_and_paging_goes_on_from_there(panel):
    yield panel.register()
    adapter = panel.bridge.adapter
    yield joined(panel)
    for n in range(120):
        adapter.say("alice@example.org", ["phone"], "panel-a", "bob", f"m{n}")
    yield panel.quiet(0.2)
    reply = yield panel.iq("set", f"<query xmlns='{MAM}'><set xmlns='{RSM}'><max>1000</max></set></query>", to=ROOM)
    results = room_messages(panel.sent())
    assert len(results) == 100 and find(reply, "fin").getAttribute("complete") is None
    last = str(find(reply, "fin", "set", "last"))
    reply = yield panel.iq("set", f"<query xmlns='{MAM}'><set xmlns='{RSM}'><after>{last}</after></set></query>",
                           to=ROOM, iq_id="q2")
    rest = room_messages(panel.sent())
    assert len(rest) == 20 and find(reply, "fin")["complete"] == "true"
    assert str(find(rest[-1], "result", "forwarded", "message", "body")) == "m119"
