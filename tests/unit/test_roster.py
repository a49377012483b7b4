"""
XEP-0356 advertisements of both versions (the bytes Prosody and ejabberd
really send, docs: ../shared/reference/xmpp-servers-2.md), hostile ones, the
roster keeper on a real stream (push, a server whose roster set fails as
ejabberd 23.01's does, the subscription fallback), and the registry's
roster_contacts table on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.words.xish import domish

from gateway.adapters.irc import IRCAdapter
from gateway.xmpp.privilege import NS_PRIVILEGE_1, NS_PRIVILEGE_2, Grants, parse_advertisement
from gateway.xmpp.roster import RosterKeeper
from tests.unit.test_registry import registry  # noqa: F401  (the fixture: SQLite and PostgreSQL)
from tests.unit.wire import DOMAIN, Wire, find

PROSODY = ("<message from='localhost' to='sms.localhost'><privilege xmlns='urn:xmpp:privilege:2'>"
           "<perm access='roster' type='both'/><perm access='message' type='outgoing'/><perm access='iq'>"
           "<namespace type='get' ns='urn:xmpp:http:upload:0'/></perm></privilege></message>")
EJABBERD = ("<message to='priv.localhost' from='localhost'><privilege xmlns='urn:xmpp:privilege:1'>"
            "<perm type='outgoing' access='message'/><perm type='both' access='roster'/>"
            "<perm type='none' access='presence'/></privilege></message>")


def element(xml: str) -> domish.Element:
    found = []
    parser = domish.elementStream()
    parser.DocumentStartEvent = lambda root: None
    parser.ElementEvent = found.append
    parser.DocumentEndEvent = lambda: None
    parser.parse(b"<stream>" + xml.encode() + b"</stream>")
    return found[0]


def test_prosody_privilege_2_advertisement():
    p = parse_advertisement(element(PROSODY))
    assert p.host == "localhost" and p.namespace == NS_PRIVILEGE_2
    assert (p.roster, p.message, p.presence) == ("both", "outgoing", "none")
    assert p.roster_set and p.roster_get
    assert p.iq == {"urn:xmpp:http:upload:0": "get"}


def test_ejabberd_privilege_1_advertisement_in_its_attribute_order():
    p = parse_advertisement(element(EJABBERD))
    assert p.host == "localhost" and p.namespace == NS_PRIVILEGE_1
    assert (p.roster, p.message, p.presence) == ("both", "outgoing", "none")
    assert p.iq == {}


@pytest.mark.parametrize("roster, can_set, can_get", [("get", False, True), ("set", True, False),
                                                      ("none", False, False), ("all-of-it", False, False)])
def test_roster_types(roster, can_set, can_get):
    p = parse_advertisement(element(f"<message from='example.org'><privilege xmlns='urn:xmpp:privilege:2'>"
                                    f"<perm access='roster' type='{roster}'/></privilege></message>"))
    assert (p.roster_set, p.roster_get) == (can_set, can_get)


@pytest.mark.parametrize("xml", [
    # A user, or a user's resource, cannot grant anything: only a server's own domain JID.
    PROSODY.replace("from='localhost'", "from='mallory@localhost'"),
    PROSODY.replace("from='localhost'", "from='localhost/res'"),
    PROSODY.replace("from='localhost'", ""),
    PROSODY.replace("urn:xmpp:privilege:2", "urn:xmpp:privilege:3"),
    "<message from='localhost'><body>hi</body></message>",
])
def test_not_an_advertisement(xml):
    assert parse_advertisement(element(xml)) is None


def test_repeats_and_floods_are_bounded():
    perms = "<perm access='roster' type='none'/>" + "<perm access='roster' type='both'/>" * 100
    spaces = "".join(f"<namespace type='get' ns='urn:x:{n}'/>" for n in range(500))
    p = parse_advertisement(element(f"<message from='example.org'><privilege xmlns='urn:xmpp:privilege:2'>"
                                    f"<perm access='iq'>{spaces}</perm>{perms}</privilege></message>"))
    assert p.roster == "none"                # the first one counts
    assert len(p.iq) == 32


def test_irc_contact_names():
    adapter = IRCAdapter.__new__(IRCAdapter)
    adapter.config = {"fixed_server": ""}
    assert adapter.contact_name("bob%irc.example.org") == "bob on irc.example.org"
    adapter.config = {"fixed_server": "irc.example.org"}
    assert adapter.contact_name("bob%irc.example.org") == "bob"


def test_rooms_and_servers_are_no_contacts():
    adapter = IRCAdapter.__new__(IRCAdapter)
    adapter.config = {"fixed_server": ""}
    keeper = RosterKeeper(SimpleNamespace(domain="irc.example.org"), SimpleNamespace(adapter=adapter), Grants())
    assert keeper.group_name == "IRC"
    assert keeper.is_contact("bob%irc.libera.chat")
    assert not keeper.is_contact("#chan%irc.libera.chat")
    assert not keeper.is_contact("irc.libera.chat")
    assert not keeper.is_contact("+1555,+1556")            # a group message's recipients


# -- the keeper on a real stream ------------------------------------------------

@pytest.fixture
def wire(tmp_path):
    w = pytest_twisted.blockon(Wire(os.path.join(tmp_path, "reg.sqlite"), roster="auto").start())
    yield w
    w.stop()


def is_roster_set(el) -> bool:
    return el.name == "iq" and el.getAttribute("type") == "set" and find(el, "query") is not None


def is_roster_iq(el) -> bool:
    return el.name == "iq" and find(el, "query") is not None and find(el, "query").uri == "jabber:iq:roster"


@pytest_twisted.inlineCallbacks
def answer_roster_get(wire, items: str = ""):
    get = yield wire.wait(lambda el: is_roster_iq(el) and el.getAttribute("type") == "get")
    wire.feed(f"<iq type='result' id='{get['id']}' from='{get['to']}' to='{DOMAIN}'>"
              f"<query xmlns='jabber:iq:roster'>{items}</query></iq>")
    return get


def is_subscribe(el) -> bool:
    return el.name == "presence" and el.getAttribute("type") == "subscribe" and "@" in el.getAttribute("from", "")


def say(wire, to: str, text: str = "hi") -> None:
    wire.feed(f"<message from='alice@example.org/phone' to='{to}@{DOMAIN}' type='chat'><body>{text}</body></message>")


@pytest_twisted.inlineCallbacks
def test_push_then_a_failing_server_gets_subscription_requests(wire):
    yield wire.register()
    wire.feed(EJABBERD.replace("localhost", "example.org").replace("priv.example.org", DOMAIN))
    assert [el for el in (yield wire.quiet()) if el.getAttribute("type") == "error"] == []   # nothing refused
    say(wire, "bob")
    yield answer_roster_get(wire)                   # the roster get works on ejabberd
    push = yield wire.wait(is_roster_set)
    assert push["to"] == "alice@example.org" and push["from"] == DOMAIN
    item = find(push, "query", "item")
    assert item["jid"] == f"bob@{DOMAIN}" and item["name"] == "bob" and str(find(item, "group")) == "Echo gateway"
    # ejabberd 23.01: the roster set crashes on the server.
    wire.feed(f"<iq type='error' id='{push['id']}' from='alice@example.org' to='{DOMAIN}'><error type='wait'>"
              "<internal-server-error xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
    ask = yield wire.wait(is_subscribe)
    assert ask["from"] == f"bob@{DOMAIN}" and ask["to"] == "alice@example.org"
    assert str(find(ask, "nick")) == "bob"
    say(wire, "carol")                       # the host's push failed: no push tried again on this connection
    ask = yield wire.wait(is_subscribe)
    assert ask["from"] == f"carol@{DOMAIN}"
    say(wire, "bob", "again")
    say(wire, "carol", "again")
    assert [el for el in (yield wire.quiet()) if is_roster_set(el) or is_subscribe(el)] == []
    assert (yield wire.registry.roster_contact(DOMAIN, "alice@example.org", "bob")) == "subscription"


@pytest_twisted.inlineCallbacks
def test_a_forged_advertisement_grants_nothing(wire):
    yield wire.register()
    wire.feed(PROSODY.replace("from='localhost'", "from='alice@example.org/phone'")
              .replace("sms.localhost", DOMAIN))
    say(wire, "dave")
    ask = yield wire.wait(is_subscribe)
    assert ask["from"] == f"dave@{DOMAIN}"
    assert [el for el in (yield wire.quiet()) if is_roster_set(el)] == []


@pytest_twisted.inlineCallbacks
def test_a_granted_push_is_made_once_and_remembered(wire):
    yield wire.register()
    wire.feed(PROSODY.replace("localhost", "example.org").replace("sms.example.org", DOMAIN))
    say(wire, "erin")
    yield answer_roster_get(wire)
    push = yield wire.wait(is_roster_set)
    wire.feed(f"<iq type='result' id='{push['id']}' from='alice@example.org' to='{DOMAIN}'/>")
    say(wire, "erin", "second")
    assert [el for el in (yield wire.quiet()) if is_roster_set(el) or is_subscribe(el)] == []
    assert (yield wire.registry.roster_contact(DOMAIN, "alice@example.org", "erin")) == "roster"
    wire.stream.group.roster._done.clear()          # as after a restart: the registry still knows
    say(wire, "erin", "third")
    assert [el for el in (yield wire.quiet()) if is_roster_set(el) or is_subscribe(el)] == []


@pytest_twisted.inlineCallbacks
def test_an_unanswered_push_falls_back(wire):
    wire.stream.group.roster.timeout = 0.2
    yield wire.register()
    wire.feed(PROSODY.replace("localhost", "example.org").replace("sms.example.org", DOMAIN))
    say(wire, "fred")
    yield wire.wait(is_roster_set)
    ask = yield wire.wait(is_subscribe)          # no answer within the timeout
    assert ask["from"] == f"fred@{DOMAIN}"
    yield wire.quiet()


# -- the registry ---------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_roster_contacts_are_kept_known_and_deleted_with_the_user(registry):  # noqa: F811
    c, u = "c.example", "u@example.org"
    assert (yield registry.roster_contact(c, u, "+15550001")) is None
    yield registry.put_roster_contact(c, u, "+15550001", "subscription")
    yield registry.put_roster_contact(c, u, "+15550001", "roster")
    yield registry.put_roster_contact(c, "other@example.org", "+15550009", "roster")
    yield registry.put_message_id(c, u, "x1", "f1", "+15550002")
    yield registry.put_message_id(c, u, "x2", "f2", "+15550001")
    assert (yield registry.roster_contact(c, u, "+15550001")) == "roster"
    assert (yield registry.known_contacts(c, u)) == ["+15550001", "+15550002"]
    assert (yield registry.known_contacts(c, u, limit=1)) == ["+15550001"]
    yield registry.delete_registration(c, u)
    assert (yield registry.known_contacts(c, u)) == []
    assert (yield registry.roster_contact(c, "other@example.org", "+15550009")) == "roster"


@pytest_twisted.inlineCallbacks
def test_a_contact_already_in_the_roster_is_left_as_the_user_made_it(wire):
    yield wire.register()
    wire.feed(PROSODY.replace("localhost", "example.org").replace("sms.example.org", DOMAIN))
    say(wire, "gina")
    get = yield answer_roster_get(wire, f"<item jid='gina@{DOMAIN}' name='Gina (mine)' subscription='to'>"
                                        "<group>Friends</group></item>")
    assert get["to"] == "alice@example.org" and get["from"] == DOMAIN
    assert [el for el in (yield wire.quiet()) if is_roster_set(el) or is_subscribe(el)] == []
    assert (yield wire.registry.roster_contact(DOMAIN, "alice@example.org", "gina")) == "existing"


@pytest_twisted.inlineCallbacks
def test_a_contact_the_user_subscribed_to_is_never_pushed_over(wire):
    yield wire.register()
    wire.feed(f"<presence from='alice@example.org' to='hank@{DOMAIN}' type='subscribe'/>")
    yield wire.wait(lambda el: el.name == "presence" and el.getAttribute("type") == "subscribed")
    wire.feed(PROSODY.replace("localhost", "example.org").replace("sms.example.org", DOMAIN))
    say(wire, "hank")
    assert [el for el in (yield wire.quiet()) if is_roster_iq(el) or is_subscribe(el)] == []
    assert (yield wire.registry.roster_contact(DOMAIN, "alice@example.org", "hank")) == "existing"


@pytest_twisted.inlineCallbacks
def test_contacts_heard_from_are_added_at_a_bounded_rate(wire):
    """Anyone may text or mail a user from ever new addresses: at most a burst of them go in the roster."""
    from gateway.model import InboundMessage

    yield wire.register()
    keeper = wire.stream.group.roster
    for n in range(keeper.INBOUND_BURST + 5):      # what the outbox hands the XMPP side, once each
        wire.bridge.output.send_message(InboundMessage(component=DOMAIN, user="alice@example.org",
                                                       sender=f"spam{n}", body="buy now"))
    asked = []
    for _ in range(50):
        asked += [el["from"] for el in (yield wire.quiet(0.1)) if is_subscribe(el)]
        if len(asked) >= keeper.INBOUND_BURST:
            break
    asked += [el["from"] for el in (yield wire.quiet(0.5)) if is_subscribe(el)]
    assert len(asked) == keeper.INBOUND_BURST
    say(wire, "wall")                     # what the user writes to is not limited (wall answers nothing)
    ask = yield wire.wait(is_subscribe)
    assert ask["from"] == f"wall@{DOMAIN}"
    yield settle(wire)


@pytest_twisted.inlineCallbacks
def settle(wire):
    """The last roster rows written before the registry closes."""
    yield wire.quiet()
    yield wire.registry.settled()


@pytest_twisted.inlineCallbacks
def test_roster_subscribe_always_asks_and_off_does_nothing(tmp_path):
    for mode in ("subscribe", "off"):
        wire = yield Wire(os.path.join(tmp_path, f"{mode}.sqlite"), roster=mode).start()
        try:
            yield wire.register()
            form = yield wire.iq("get", "<query xmlns='jabber:iq:register'/>", iq_id=f"form-{mode}")
            fields = [f.getAttribute("var") for f in find(form, "query", "x").elements() if f.name == "field"]
            assert ("import_contacts" in fields) == (mode != "off")
            wire.feed(PROSODY.replace("localhost", "example.org").replace("sms.example.org", DOMAIN))
            say(wire, "wall")                # refused by the echo network: no answer comes back
            got = [el for el in (yield wire.quiet(0.5)) if is_roster_iq(el) or is_subscribe(el)]
            assert [el.name for el in got] == (["presence"] if mode == "subscribe" else [])
            yield settle(wire)
        finally:
            wire.stop()


@pytest_twisted.inlineCallbacks
def test_import_without_the_privilege_asks_again(wire):
    yield wire.register()
    say(wire, "wall")
    yield wire.wait(is_subscribe)
    reply = yield wire.iq("set", "<command xmlns='http://jabber.org/protocol/commands' node='import-contacts' "
                                 "action='execute'/>", iq_id="imp")
    command = find(reply, "command")
    assert command["status"] == "completed"
    assert str(find(command, "note")) == ("1 subscription request(s) sent (your server does not let this gateway "
                                          "edit your roster: accept them to add the contacts).")
    ask = yield wire.wait(is_subscribe)
    assert ask["from"] == f"wall@{DOMAIN}"
    yield settle(wire)
