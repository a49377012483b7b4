"""
Hostile input found by the adversary review: each test failed before its fix.
Real stream, parser, handlers, bridge and registry on an in-memory transport
(tests/unit/wire.py), with the group-chat adapter of test_room_history.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer

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
    yield panel.registry.settled()          # the line is in the archive (not a guess at how long that takes)
    panel.sent()
    panel.feed(f"<presence from='alice@example.org/laptop' to='{ROOM}/alice'><x xmlns='http://jabber.org/protocol/muc'>"
               "<history maxstanzas='\u00b2' maxchars='\u00b9' seconds='\u00b3'/></x></presence>")
    # The subject closes the history (XEP-0045 §7.2.15): wait for it, then take what came before it.
    subject = yield panel.wait(lambda el: el.name == "message" and el.getAttribute("to", "").endswith("/laptop")
                               and find(el, "subject") is not None, timeout=30)
    got = panel.sent() + [subject]
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


@pytest_twisted.inlineCallbacks
def test_stalling_name_lookups_do_not_take_every_reactor_thread(monkeypatch):
    """
    A user's file URLs on names whose DNS never answers (a name server the user
    runs): each lookup held one of the reactor's threads past the fetch's own
    time-out, so a few dozen of them took all of them, and every other thread
    job of the gateway (mail parsing and composing, IRC destination lookups,
    file writes) waited behind them for every user.
    """
    import socket
    import threading

    from twisted.internet import reactor, task, threads

    from gateway.web.fetch import FetchFailed, Fetcher

    release = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if str(host).endswith(".stall.example"):
            release.wait(30)
            raise socket.gaierror("stalled")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    fetcher = Fetcher(reactor, max_size=1000, timeout=0.5, allow_private=False)
    try:
        fetches = [fetcher.fetch(f"http://n{n}.stall.example/f.png") for n in range(20)]
        yield task.deferLater(reactor, 1.0, lambda: None)      # timed out: the lookups' threads still run
        fetches += [fetcher.fetch(f"http://m{n}.stall.example/f.png") for n in range(20)]
        for d in fetches:
            d.addErrback(lambda f: f.trap(FetchFailed))
        yield task.deferLater(reactor, 0.2, lambda: None)
        other = threads.deferToThread(lambda: "free")
        done = []
        other.addCallback(done.append)
        for _ in range(300):                           # up to 3 s: the job needs a free thread, not the lookups
            if done:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        assert done == ["free"]
        yield defer.DeferredList(fetches)
    finally:
        release.set()


@pytest_twisted.inlineCallbacks
def test_one_users_pending_joins_do_not_take_every_others_history(panel, monkeypatch):
    """
    Joins awaiting their history were bounded for the whole gateway only
    (MAX_JOINS): one user with many resources joining rooms that never finish
    (a server that never ends the join) filled the table, and every other
    user's join then got no history at all. Now each user has a share.
    """
    from gateway.bridge import archive

    monkeypatch.setattr(archive, "MAX_JOINS", 20)
    monkeypatch.setattr(archive, "MAX_USER_JOINS", 5, raising=False)
    yield panel.register("bob@example.org/pc", "bob")
    panel.feed(f"<presence from='bob@example.org/pc' to='{ROOM}/bob'><x xmlns='http://jabber.org/protocol/muc'/>"
               "</presence>")
    yield panel.wait(lambda el: el.name == "message" and find(el, "subject") is not None)
    panel.bridge.adapter.say("bob@example.org", ["pc"], "panel-a", "carol", "for bob")
    yield panel.quiet(0.1)

    yield panel.register()
    panel.bridge.adapter.subject_now = False
    for n in range(30):
        panel.feed(f"<presence from='alice@example.org/r{n}' to='{ROOM}/alice'>"
                   "<x xmlns='http://jabber.org/protocol/muc'/></presence>")
    yield panel.quiet(0.2)

    panel.bridge.adapter.subject_now = True
    panel.feed(f"<presence from='bob@example.org/laptop' to='{ROOM}/bob'><x xmlns='http://jabber.org/protocol/muc'/>"
               "</presence>")
    got = yield panel.quiet(0.3)
    laptop = [text(m) for m in room_messages(got) if m["to"] == "bob@example.org/laptop"]
    assert laptop == ["body:for bob", "subject:the topic"]


@pytest_twisted.inlineCallbacks
def test_invitations_passed_on_are_rate_limited(tmp_path):
    """
    A mediated invitation to a JID elsewhere is a message from the room's JID
    to anyone: it went out with no rate limit (five per stanza, as many stanzas
    as the user sends), a spam relay under the gateway's name. It counts against
    the user's rate like any message they send.
    """
    from twisted.internet import defer as _defer
    from zope.interface import implementer

    from gateway.interfaces import IModeration

    @implementer(IModeration)
    class ModeratedPanel(PanelAdapter):
        def set_role(self, registration, room, nick, role, reason):
            return _defer.succeed(None)

        def set_affiliation(self, registration, room, nick, affiliation, reason):
            return _defer.succeed(None)

        def invite(self, registration, room, address, reason):
            return _defer.succeed(None)

        def occupant_nick(self, room, address):
            return None

    w = yield Wire(os.path.join(tmp_path, "reg.sqlite"), adapter=ModeratedPanel,
                   limits={"rate": 0.001, "burst": 3}).start()
    try:
        yield _joined(w)
        for n in range(10):
            w.feed(f"<message from='alice@example.org/phone' to='{ROOM}' id='i{n}'>"
                   "<x xmlns='http://jabber.org/protocol/muc#user'>"
                   + "".join(f"<invite to='victim{n}-{k}@elsewhere.example'/>" for k in range(5)) + "</x></message>")
        got = yield w.quiet(0.3)
        relayed = [m for m in got if m.name == "message" and m["to"].endswith("@elsewhere.example")]
        assert len(relayed) <= 3
        refused = [m for m in got if m.getAttribute("type") == "error"]
        assert refused and all(error_of(m)[0] == "policy-violation" for m in refused)
    finally:
        w.stop()


@pytest_twisted.inlineCallbacks
def test_a_network_id_unfit_for_xml_does_not_break_the_archive_answers(panel):
    """
    A group-chat adapter's message id went into the archive as the network gave
    it; the live line had it cleaned (xml_safe), but MAM and history on join
    wrote it raw: a control character made the stanza not well-formed, and the
    server closes the component stream for everyone. Every path cleans it the same way.
    """
    from gateway.model import RoomEvent

    yield _joined(panel)
    bridge = panel.bridge
    for n, bad in enumerate(["a\x01b", "c\x02d"]):
        bridge.room_event(RoomEvent(bridge.component, "alice@example.org", ["phone"], "panel-a", "message",
                                    nick="bob", body=f"m{n}", stanza_id=bad))
    live = room_messages((yield panel.quiet(0.2)))
    reply = yield panel.iq("set", f"<query xmlns='{MAM}' queryid='q'/>", to=ROOM)
    results = room_messages(panel.sent())
    assert reply["type"] == "result" and len(results) == 2
    ids = [find(r, "result")["id"] for r in results]
    assert ids == ["ab", "cd"]
    assert [find(m, "stanza-id")["id"] for m in live] == ids        # the same id live and archived


@pytest_twisted.inlineCallbacks
def test_a_timestamp_past_year_9999_does_not_make_the_archive_unreadable(panel):
    """
    The archive took any stamp below 2**62 microseconds (year ~146000), but a
    datetime ends in 9999: one such line from the network made every MAM
    query of the room fail (internal-server-error) for good. A stamp no
    datetime can hold is archived as the time it came.
    """
    from gateway.model import RoomEvent

    yield _joined(panel)
    bridge = panel.bridge
    bridge.archive.record(RoomEvent(bridge.component, "alice@example.org", [], "panel-a", "message",
                                    nick="bob", body="far", timestamp=1e12))
    reply = yield panel.iq("set", f"<query xmlns='{MAM}' queryid='q'/>", to=ROOM)
    assert reply["type"] == "result"
    assert [str(find(r, "result", "forwarded", "message", "body")) for r in room_messages(panel.sent())] == ["far"]


@pytest_twisted.inlineCallbacks
def test_history_on_join_has_a_budget_per_user(panel, monkeypatch):
    """
    Joins are not rate limited (clients join dozens of rooms at once), and each
    one read and wrote up to 1000 archived messages: leaving and joining in a
    loop made the gateway serialise thousands of stanzas a second for one user,
    the reactor's time taken from everyone. History comes out of a per-user
    budget (HISTORY_BURST messages, refilled at HISTORY_RATE a second); a join
    past it gets what is left (or none) and is otherwise a normal join.
    """
    from gateway.bridge import archive

    monkeypatch.setattr(archive, "HISTORY_BURST", 100, raising=False)
    monkeypatch.setattr(archive, "HISTORY_RATE", 0.001, raising=False)
    yield _joined(panel)
    for n in range(40):
        panel.bridge.adapter.say("alice@example.org", ["phone"], "panel-a", "bob", f"m{n}")
    yield panel.quiet(0.2)
    history = subjects = 0
    for n in range(10):
        panel.feed(f"<presence from='alice@example.org/r{n}' to='{ROOM}/alice'>"
                   "<x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='40'/></x></presence>")
        got = room_messages((yield panel.quiet(0.15)))
        history += sum(1 for m in got if find(m, "delay") is not None)
        subjects += sum(1 for m in got if find(m, "subject") is not None)
        panel.feed(f"<presence from='alice@example.org/r{n}' to='{ROOM}/alice' type='unavailable'/>")
    assert subjects == 10                       # every join completes
    assert history <= 100
