"""
The paced room queue (gateway/xmpp/pacing.py) on a task.Clock: what merges,
what never does, what keeps its order, the byte budget, the server's backlog,
the bound, and the component's own output using it (the wire).
"""

from twisted.internet import task

from gateway.model import RoomEvent
from gateway.xmpp.pacing import RoomPacer

ROOM = "#big%irc.example.net"


def presence(nick, user="alice@example.org", unavailable=False, role="participant", **kw):
    return RoomEvent(component="irc.example.org", user=user, resources=["phone"], room=ROOM, kind="presence",
                     nick=nick, unavailable=unavailable, role="none" if unavailable else role, **kw)


def message(nick, body, user="alice@example.org"):
    return RoomEvent(component="irc.example.org", user=user, resources=["phone"], room=ROOM, kind="message",
                     nick=nick, body=body)


def label(e):
    if e.kind == "message":
        return f"msg {e.nick}: {e.body}"
    state = "gone" if e.unavailable else e.role
    return f"{'own ' if e.own else ''}{e.nick} {state}" + (f" ->{e.new_nick}" if e.new_nick else "")


class Out:
    """The written events, 100 bytes each, and a stream that is up unless told otherwise."""

    def __init__(self):
        self.written = []
        self.up = True
        self.unsent = 0

    def write(self, event):
        self.written.append(label(event))
        return 100


def pacer(rate=0.0, limit=1000, max_backlog=0):
    clock, out = task.Clock(), Out()
    p = RoomPacer(out.write, lambda: out.up, clock, rate=rate, limit=limit, max_backlog=max_backlog,
                  backlog=lambda: out.unsent)
    return clock, out, p


def held(p, events):
    """Queue events while the stream is down, so that they wait together."""
    for e in events:
        p.put(e)


def test_nothing_waiting_is_written_at_once():
    clock, out, p = pacer(rate=10_000)
    p.put(presence("bob"))
    p.put(message("bob", "hi"))
    assert out.written == ["bob participant", "msg bob: hi"]
    assert p.pending == 0


def test_presences_of_one_occupant_merge_into_the_latest_in_the_first_ones_place():
    clock, out, p = pacer()
    out.up = False
    held(p, [presence("bob"), presence("carol"), presence("bob", role="moderator"), presence("bob", role="visitor")])
    assert p.pending == 2 and p.merged == 2
    out.up = True
    clock.advance(1)
    assert out.written == ["bob visitor", "carol participant"]


def test_leaving_then_coming_back_keeps_the_latest_state():
    clock, out, p = pacer()
    out.up = False
    held(p, [presence("bob"), presence("bob", unavailable=True), presence("carol"),
             presence("carol", unavailable=True), presence("carol")])
    out.up = True
    clock.advance(1)
    assert out.written == ["bob gone", "carol participant"]


def test_other_users_resources_and_rooms_never_merge():
    clock, out, p = pacer()
    out.up = False
    other_resource = presence("bob")
    other_resource.resources = ["laptop"]
    other_room = presence("bob")
    other_room.room = "#other%irc.example.net"
    held(p, [presence("bob"), presence("bob", user="dave@example.org"), other_resource, other_room])
    assert p.pending == 4 and p.merged == 0


def test_a_message_is_a_barrier_no_presence_crosses():
    clock, out, p = pacer()
    out.up = False
    held(p, [presence("bob"), message("bob", "hello"), presence("bob", unavailable=True), presence("bob"),
             message("bob", "back")])
    out.up = True
    clock.advance(1)
    # bob's join stays before his line, his leaving (merged with his return) after it
    assert out.written == ["bob participant", "msg bob: hello", "bob participant", "msg bob: back"]


def test_the_users_own_presence_stays_after_the_occupant_list_of_the_join():
    clock, out, p = pacer()
    out.up = False
    held(p, [presence("bob"), presence("carol"), presence("me", own=True, joined=True),
             presence("bob", role="moderator"), presence("carol", unavailable=True)])
    out.up = True
    clock.advance(1)
    assert out.written == ["bob participant", "carol participant", "own me participant", "bob moderator",
                           "carol gone"]


def test_nick_changes_and_kicks_are_never_merged():
    clock, out, p = pacer()
    out.up = False
    held(p, [presence("bob"), presence("bob", unavailable=True, new_nick="rob"), presence("rob"),
             presence("bob"), presence("bob", unavailable=True, kicked=True, actor="op")])
    out.up = True
    clock.advance(1)
    assert out.written == ["bob participant", "bob gone ->rob", "rob participant", "bob participant",
                           "bob gone"]


def test_messages_are_never_merged():
    clock, out, p = pacer()
    out.up = False
    held(p, [message("bob", "a"), message("bob", "a"), message("bob", "b")])
    out.up = True
    clock.advance(1)
    assert out.written == ["msg bob: a", "msg bob: a", "msg bob: b"]


def test_the_byte_budget_paces_the_output():
    clock, out, p = pacer(rate=1000)        # 10 events of 100 bytes per second; bursts of 0.1 s
    for i in range(30):
        p.put(presence(f"n{i}"))
    first = len(out.written)
    assert first <= 2
    clock.pump([0.1] * 10)                  # one second
    assert 8 <= len(out.written) - first <= 12, len(out.written)
    clock.pump([0.1] * 30)
    assert len(out.written) == 30 and p.pending == 0
    assert out.written == [f"n{i} participant" for i in range(30)]


def test_paced_presences_merge_while_they_wait():
    clock, out, p = pacer(rate=1000)
    for round_ in range(5):
        for i in range(20):
            p.put(presence(f"n{i}", role="moderator" if round_ == 4 else "participant"))
    clock.pump([0.1] * 50)
    assert p.pending == 0
    assert len(out.written) < 40                     # far fewer than the 100 produced
    finals = {}
    for line in out.written:
        nick, state = line.split()
        finals[nick] = state
    assert finals == {f"n{i}": "moderator" for i in range(20)}


def test_output_waits_while_the_server_has_not_taken_the_backlog():
    clock, out, p = pacer(max_backlog=800)
    out.unsent = 5000                               # the server is behind
    for i in range(50):
        p.put(presence(f"n{i}"))
    stalled = len(out.written)
    assert stalled <= 2                             # at most one eighth of the allowance before asking
    clock.pump([0.02] * 20)
    assert len(out.written) == stalled
    out.unsent = 0
    clock.pump([0.02] * 10)
    assert len(out.written) == 50


def test_nothing_drains_while_the_stream_is_down_and_all_of_it_after():
    clock, out, p = pacer(rate=100_000)
    out.up = False
    for i in range(10):
        p.put(presence(f"n{i}"))
        p.put(message(f"n{i}", "x"))
    clock.pump([1] * 5)
    assert out.written == []
    out.up = True
    clock.pump([0.2] * 5)
    assert len(out.written) == 20


def test_over_the_bound_the_oldest_presences_go_and_messages_stay():
    dropped = []
    clock, out = task.Clock(), Out()
    p = RoomPacer(out.write, lambda: out.up, clock, limit=10, on_drop=dropped.append)
    out.up = False
    for i in range(5):
        p.put(message("bob", str(i)))
    for i in range(20):
        p.put(presence(f"n{i}"))
    assert p.pending == 10
    assert sum(dropped) == 15 == p.dropped
    out.up = True
    clock.advance(1)
    assert out.written == [f"msg bob: {i}" for i in range(5)] + [f"n{i} participant" for i in range(15, 20)]


def test_over_the_bound_a_presence_merges_across_a_message():
    clock, out, p = pacer(limit=3)
    out.up = False
    held(p, [presence("bob"), message("bob", "hi"), presence("carol"), presence("bob", role="moderator")])
    assert p.pending == 3 and p.dropped == 0 and p.merged == 1
    out.up = True
    clock.advance(1)
    assert out.written == ["bob moderator", "msg bob: hi", "carol participant"]


def test_flush_writes_everything_now():
    clock, out, p = pacer(rate=100)
    for i in range(20):
        p.put(presence(f"n{i}", own=True, unavailable=True, service_stopping=True))
    before = len(out.written)
    assert before < 20
    assert p.flush() == 20 - before
    assert len(out.written) == 20 and p.pending == 0


class FakeStream:
    """What StanzaOutput writes on: serialised stanzas in a list."""

    domain = "irc.example.org"

    def __init__(self):
        self.connected = True
        self.out = []

    def send_serialized(self, xml, kind):
        self.out.append((kind, xml))

    def unsent(self):
        return 0


def test_the_output_paces_room_events_and_flushes_them_at_shutdown():
    from gateway.xmpp.messages import StanzaOutput
    clock, stream = task.Clock(), FakeStream()
    out = StanzaOutput(stream, None, pacing={"room_pacing_bytes": 1000, "room_pacing_backlog": 0,
                                             "room_queue_limit": 100}, clock=clock)
    for i in range(10):
        out.send_room_event(presence(f"n{i}"))
    out.send_room_event(message("n1", "hello"))
    before = len(stream.out)
    assert 1 <= before < 11                           # a presence is some 200 bytes: the rest wait
    assert out.flush_room_events() == 11 - before
    assert [k for k, _ in stream.out] == ["presence"] * 10 + ["message"]
    assert "n9" in stream.out[9][1] and "hello" in stream.out[10][1]


def test_with_only_lines_left_over_the_bound_the_oldest_lines_go():
    clock, out, p = pacer(limit=5)
    out.up = False
    held(p, [message("bob", str(i)) for i in range(8)])
    assert p.pending == 5 and p.dropped == 3
    out.up = True
    clock.advance(1)
    assert out.written == [f"msg bob: {i}" for i in range(3, 8)]


def test_while_the_stream_is_down_the_paced_queue_holds_room_events_not_the_bridge(tmp_path):
    from gateway.adapters.echo import EchoAdapter
    from gateway.bridge import Bridge
    from gateway.registry import SQLRegistry
    from gateway.registry.crypto import SecretBox
    from gateway.xmpp.messages import StanzaOutput
    from tests.unit.wire import LIMITS, OUTBOX
    clock, stream = task.Clock(), FakeStream()
    registry = SQLRegistry(f"sqlite:///{tmp_path}/r.sqlite", SecretBox.generate(), "unit")
    bridge = Bridge("irc.example.org", EchoAdapter, {"delay": 0.0}, registry, clock, OUTBOX, LIMITS)
    bridge.attach(StanzaOutput(stream, None, pacing={"room_pacing_bytes": 0, "room_queue_limit": 1000}, clock=clock))
    stream.connected = False
    for round_ in range(3):
        for i in range(10):
            bridge.room_event(presence(f"n{i}", role="moderator" if round_ == 2 else "participant"))
    bridge.room_event(message("n1", "hello"))
    assert len(bridge._held_room_events) == 0
    assert bridge.output.pacer.pending == 11                 # merged: one presence per occupant, and the line
    clock.advance(1)
    assert stream.out == []
    stream.connected = True
    clock.advance(1)
    assert [k for k, _ in stream.out] == ["presence"] * 10 + ["message"]
    assert all("moderator" in xml for _, xml in stream.out[:10])
