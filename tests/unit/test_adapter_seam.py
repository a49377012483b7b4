"""
The adapter seam: optional abilities are declared interfaces, and a third-party
adapter that declares one gets the XMPP feature without the XMPP side knowing it.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface import implementedBy, implementer
from zope.interface.verify import verifyClass

from gateway.adapters.echo import EchoAdapter
from gateway.adapters.email import EmailAdapter
from gateway.adapters.irc import IRCAdapter
from gateway.adapters.sms import SMSAdapter
from gateway.interfaces import IAdapter, IGroupChat, IModeration, ISendNow
from gateway.model import GatewayError, RoomEvent
from tests.unit.wire import DOMAIN, Wire, children, find

NS_MUC_USER = "http://jabber.org/protocol/muc#user"


@pytest.mark.parametrize("adapter", [EchoAdapter, EmailAdapter, IRCAdapter, SMSAdapter])
def test_built_in_adapters_implement_what_they_declare(adapter):
    """An interface declared but not implemented would fail only when a user reaches that feature."""
    declared = list(implementedBy(adapter))
    assert IAdapter in declared
    for interface in declared:
        assert verifyClass(interface, adapter)


def test_the_irc_adapter_moderates():
    """IModeration (muc#admin kicks, voice, op, bans; invitations) is declared and implemented by IRC."""
    assert IModeration in list(implementedBy(IRCAdapter))
    assert verifyClass(IModeration, IRCAdapter)


def test_the_irc_adapter_sends_room_lines_at_once():
    """ISendNow (the hot path of room messages, tests/unit/test_irc_send_fast.py) is declared and implemented."""
    assert ISendNow in list(implementedBy(IRCAdapter))
    assert verifyClass(ISendNow, IRCAdapter)


@implementer(IGroupChat)
class PanelAdapter(EchoAdapter):
    """A third-party network with rooms, knowing nothing of XEP-0045."""

    room_identity_type = "text"
    occupants_visible = False

    def is_room(self, address: str) -> bool:
        return address.startswith("panel-")

    def occupant_address(self, room: str, nick: str) -> str:
        return f"{nick}.{room}"

    def room_name(self, room: str) -> str:
        return f"Panel {room[6:]}"

    def join(self, registration, resource, room, nick, password):
        self.context.room_event(RoomEvent(self.context.component, registration.jid, [resource], room, "presence",
                                          nick="host", role="moderator", affiliation="owner"))
        self.context.room_event(RoomEvent(self.context.component, registration.jid, [resource], room, "presence",
                                          nick=nick, own=True, joined=True, nick_assigned=nick != "asked"))
        return defer.succeed(None)

    def leave(self, user, resource, room):
        return defer.succeed(None)

    def joined_nick(self, user, resource, room):
        return None


@pytest.fixture
def panel(tmp_path):
    w = pytest_twisted.blockon(Wire(os.path.join(tmp_path, "reg.sqlite"), adapter=PanelAdapter).start())
    yield w
    w.stop()


def codes(presence) -> set[str]:
    x = find(presence, "x")
    return {s["code"] for s in children(x, "status")} if x is not None else set()


@pytest_twisted.inlineCallbacks
def test_a_third_party_group_chat_adapter_gets_xep_0045(panel):
    yield panel.register()
    panel.feed(f"<presence from='alice@example.org/phone' to='panel-a@{DOMAIN}/alice'>"
               "<x xmlns='http://jabber.org/protocol/muc'/></presence>")
    host = yield panel.wait(lambda el: el.name == "presence" and el["from"].endswith("/host"))
    item = find(host, "x", "item")
    assert (item["role"], item["affiliation"]) == ("moderator", "owner") and codes(host) == set()
    own = yield panel.wait(lambda el: el.name == "presence" and el["from"] == f"panel-a@{DOMAIN}/alice")
    # Its own presence, a nick it did not ask for (210), and no 100: its occupants are not visible.
    assert codes(own) == {"110", "210"}
    info = yield panel.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", to=f"panel-a@{DOMAIN}")
    identity = find(info, "query", "identity")
    assert (identity["category"], identity["type"], identity["name"]) == ("conference", "text", "Panel a")


@pytest_twisted.inlineCallbacks
def test_an_adapter_without_group_chats_gets_no_muc_handling(tmp_path):
    w = yield Wire(os.path.join(tmp_path, "reg.sqlite")).start()
    try:
        yield w.register()
        w.feed(f"<presence from='alice@example.org/phone' to='panel-a@{DOMAIN}/alice'>"
               "<x xmlns='http://jabber.org/protocol/muc'/></presence>")
        assert not [el for el in (yield w.quiet(0.2)) if el.name == "presence" and el["from"].endswith("/alice")]
    finally:
        w.stop()


@implementer(IModeration)
class ModeratedPanel(PanelAdapter):
    """A third-party network with moderation: it gets muc#admin and invitations without knowing XEP-0045."""

    calls: list = []

    def set_role(self, registration, room, nick, role, reason):
        self.calls.append(("role", room, nick, role, reason))
        if nick == "boss":
            return defer.fail(GatewayError("the boss stays", "not-allowed"))
        return defer.succeed(None)

    def set_affiliation(self, registration, room, nick, affiliation, reason):
        self.calls.append(("affiliation", room, nick, affiliation, reason))
        return defer.succeed(None)

    def invite(self, registration, room, address, reason):
        self.calls.append(("invite", room, address, reason))
        return defer.succeed(None)

    def occupant_nick(self, room, address):
        return address.rpartition(".")[0] or None


@pytest_twisted.inlineCallbacks
def test_a_third_party_moderated_adapter_gets_muc_admin_and_invitations(tmp_path):
    assert verifyClass(IModeration, ModeratedPanel)
    w = yield Wire(os.path.join(tmp_path, "reg.sqlite"), adapter=ModeratedPanel).start()
    ModeratedPanel.calls = []
    try:
        yield w.register()
        admin = "http://jabber.org/protocol/muc#admin"
        kick = yield w.iq("set", f"<query xmlns='{admin}'><item nick='bob' role='none'><reason>spam</reason>"
                                 "</item></query>", to=f"panel-a@{DOMAIN}", iq_id="k1")
        assert kick["type"] == "result"
        refused = yield w.iq("set", f"<query xmlns='{admin}'><item nick='boss' role='none'/></query>",
                             to=f"panel-a@{DOMAIN}", iq_id="k2")
        assert refused["type"] == "error" and find(refused, "error", "not-allowed") is not None
        ban = yield w.iq("set", f"<query xmlns='{admin}'><item jid='carol.panel-a@{DOMAIN}' affiliation='outcast'/>"
                                "</query>", to=f"panel-a@{DOMAIN}", iq_id="b1")
        assert ban["type"] == "result"
        bad = yield w.iq("set", f"<query xmlns='{admin}'><item nick='bob' role='king'/></query>",
                         to=f"panel-a@{DOMAIN}", iq_id="x1")
        assert find(bad, "error", "bad-request") is not None
        listing = yield w.iq("get", f"<query xmlns='{admin}'><item affiliation='outcast'/></query>",
                             to=f"panel-a@{DOMAIN}", iq_id="g1")
        assert find(listing, "error", "feature-not-implemented") is not None
        w.feed(f"<message from='alice@example.org/phone' to='panel-a@{DOMAIN}'><x xmlns='{NS_MUC_USER}'>"
               f"<invite to='dave.panel-a@{DOMAIN}'><reason>come</reason></invite></x><body>join us</body></message>")
        yield w.quiet(0.2)
        # To a JID elsewhere the room passes it on, but only from someone in the room (nobody is, here).
        w.feed(f"<message id='ext1' from='alice@example.org/phone' to='panel-a@{DOMAIN}'><x xmlns='{NS_MUC_USER}'>"
               "<invite to='zoe@elsewhere.example'/></x></message>")
        refused = yield w.wait(lambda el: el.name == "message" and el.getAttribute("id") == "ext1")
        assert refused["type"] == "error" and find(refused, "error", "not-acceptable") is not None
        assert ModeratedPanel.calls == [("role", "panel-a", "bob", "none", "spam"), ("role", "panel-a", "boss", "none", None),
                                        ("affiliation", "panel-a", "carol", "outcast", None),
                                        ("invite", "panel-a", "dave.panel-a", "come")]
    finally:
        w.stop()
