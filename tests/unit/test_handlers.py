"""
Each XMPP handler, on a real stream fed byte by byte through a StringTransport,
with the real bridge, registry and echo adapter behind it.
"""

import os

import pytest
import pytest_twisted

from gateway.xmpp.caps import verification_string
from tests.unit.wire import DOMAIN, Wire, children, error_of, find


@pytest.fixture
def wire(tmp_path):
    w = pytest_twisted.blockon(Wire(os.path.join(tmp_path, "reg.sqlite")).start())
    yield w
    w.stop()


def values_of(form) -> dict:
    out = {}
    for field in children(form, "field"):
        vals = [str(v) for v in children(field, "value")]
        out[field.getAttribute("var")] = vals[0] if len(vals) == 1 else vals
    return out


# -- disco, caps, version, ping -----------------------------------------------

def test_caps_hash_matches_xep_0115_example():
    # XEP-0115 §5.2 "Simple Generation Example"
    features = ["http://jabber.org/protocol/caps", "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items", "http://jabber.org/protocol/muc"]
    assert verification_string([("client", "pc", "Exodus 0.9.1")], features) == "QgayPKawpkPSDYmwT/WM94uAlu0="


@pytest_twisted.inlineCallbacks
def test_disco_of_domain_contacts_and_caps_node(wire):
    reply = yield wire.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>")
    query = find(reply, "query")
    identity = find(query, "identity")
    assert (identity["category"], identity["type"]) == ("gateway", "echo")
    features = {f["var"] for f in children(query, "feature")}
    assert {"jabber:iq:register", "jabber:iq:gateway", "http://jabber.org/protocol/disco#info",
            "http://jabber.org/protocol/disco#items", "jid\\20escaping", "urn:xmpp:receipts"} <= features
    disco = wire.stream.presence.disco
    caps = yield wire.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info' "
                                f"node='https://pypi.org/project/xmpp-gateway/#{disco.ver}'/>", iq_id="caps")
    assert {f["var"] for f in children(find(caps, "query"), "feature")} == features
    contact = yield wire.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>",
                            to=f"bob@{DOMAIN}", iq_id="c")
    assert find(contact, "query", "identity")["category"] == "client"
    unknown = yield wire.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info' node='nope'/>",
                            iq_id="n")
    assert error_of(unknown)[0] == "item-not-found"


@pytest_twisted.inlineCallbacks
def test_version_and_ping(wire):
    reply = yield wire.iq("get", "<query xmlns='jabber:iq:version'/>")
    assert str(find(reply, "query", "name")) == "xmpp-gateway"
    assert find(reply, "query", "os") is None
    pong = yield wire.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=f"bob@{DOMAIN}", iq_id="p")
    assert pong["type"] == "result" and pong["from"] == f"bob@{DOMAIN}"
    # A contact's version is the gateway's: nothing is asked of the person on the network (docs/irc.md).
    theirs = yield wire.iq("get", "<query xmlns='jabber:iq:version'/>", to=f"bob@{DOMAIN}", iq_id="vb")
    assert theirs["type"] == "result" and str(find(theirs, "query", "name")) == "xmpp-gateway"


# -- stream guard ---------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_oversized_stanza_is_refused_and_the_stream_goes_on(wire):
    yield wire.register()
    wire.feed(f"<message from='alice@example.org/phone' to='bob@{DOMAIN}' id='big' type='chat'>"
              f"<body>{'é' * 2500}</body></message>")
    err = yield wire.wait(lambda el: el.getAttribute("id") == "big")
    cond, text = error_of(err)
    assert cond == "policy-violation" and "4000 bytes" in text
    size = int(text.split()[2])
    assert 5000 < size < 5200          # bytes, not characters
    wire.feed(f"<message from='alice@example.org/phone' to='bob@{DOMAIN}' id='ok' type='chat'><body>hi</body></message>")
    echo = yield wire.wait(lambda el: el.name == "message" and find(el, "body") is not None)
    assert str(find(echo, "body")) == "hi"


@pytest_twisted.inlineCallbacks
def test_strangers_are_refused_before_any_handler(wire):
    reply = yield wire.iq("get", "<query xmlns='jabber:iq:register'/>", sender="eve@evil.example/x")
    assert error_of(reply)[0] == "forbidden"
    reply = yield wire.iq("get", "<query xmlns='jabber:iq:version'/>", sender="eve@evil.example/x", iq_id="v")
    assert error_of(reply)[0] == "service-unavailable"
    wire.feed(f"<presence type='subscribe' from='eve@evil.example' to='{DOMAIN}'/>")
    left = yield wire.quiet()
    assert left == [], [el.toXml() for el in left]


# -- XEP-0077 -------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_registration_form_register_change_remove(wire):
    reply = yield wire.iq("get", "<query xmlns='jabber:iq:register'/>")
    query = find(reply, "query")
    assert find(query, "registered") is None and find(query, "instructions") is not None
    assert {c.name for c in query.elements() if c.uri == "jabber:iq:register"} <= \
        {"instructions", "username", "password", "registered"}          # no new elements
    form = find(query, "x")
    assert values_of(form)["FORM_TYPE"] == "jabber:iq:register"

    ok = yield wire.register(password="first-secret")
    assert ok["type"] == "result"
    subscribe = yield wire.wait(lambda el: el.name == "presence" and el.getAttribute("type") == "subscribe")
    assert subscribe["to"] == "alice@example.org" and subscribe["from"] == DOMAIN
    reg = yield wire.registry.get_registration(DOMAIN, "alice@example.org")
    assert reg.secrets == {"password": "first-secret"}

    # a change with an empty password keeps the stored one
    yield wire.register(username="alice2")
    reg = yield wire.registry.get_registration(DOMAIN, "alice@example.org")
    assert (reg.foreign_id, reg.secrets) == ("alice2", {"password": "first-secret"})

    again = yield wire.iq("get", "<query xmlns='jabber:iq:register'/>", iq_id="g2")
    assert find(again, "query", "registered") is not None
    values = values_of(find(again, "query", "x"))
    assert values["username"] == "alice2" and values.get("password", "") in ("", [])
    assert "first-secret" not in again.toXml()

    wire.sent()
    removed = yield wire.iq("set", "<query xmlns='jabber:iq:register'><remove/></query>", iq_id="rm")
    assert removed["type"] == "result"
    goodbye = [el.getAttribute("type") for el in (yield wire.quiet()) if el.name == "presence"]
    assert goodbye == ["unsubscribe", "unsubscribed", "unavailable"]
    assert (yield wire.registry.get_registration(DOMAIN, "alice@example.org")) is None
    twice = yield wire.iq("set", "<query xmlns='jabber:iq:register'><remove/></query>", iq_id="rm2")
    assert error_of(twice)[0] == "registration-required"


@pytest_twisted.inlineCallbacks
def test_registration_errors(wire):
    missing = yield wire.iq("set", "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>"
                                   "<field var='password'><value>x</value></field></x></query>", iq_id="m")
    cond, text = error_of(missing)
    assert cond == "not-acceptable" and "Name on the echo network" in text
    bad = yield wire.register(username="no spaces allowed")
    assert error_of(bad)[0] == "not-acceptable"
    yield wire.register(user="bob@example.org/x", username="taken")
    conflict = yield wire.register(username="taken")
    cond, text = error_of(conflict)
    assert cond == "conflict" and "taken" in text
    empty = yield wire.iq("set", "<query xmlns='jabber:iq:register'/>", iq_id="e")
    assert error_of(empty)[0] == "bad-request"
    legacy = yield wire.iq("set", "<query xmlns='jabber:iq:register'><username>legacy</username></query>",
                           sender="carol@example.org/x", iq_id="l")
    assert legacy["type"] == "result"
    assert (yield wire.registry.get_registration(DOMAIN, "carol@example.org")).foreign_id == "legacy"


# -- XEP-0100 -------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_subscription_handshake_and_silence_after_unsubscribe(wire):
    wire.feed(f"<presence type='subscribe' from='nobody@example.org' to='{DOMAIN}'/>")
    refused = yield wire.wait(lambda el: el.name == "presence")
    assert refused["type"] == "unsubscribed"

    yield wire.register()
    wire.sent()
    wire.feed(f"<presence type='subscribe' from='alice@example.org' to='{DOMAIN}'/>")
    answers = [el.getAttribute("type") for el in (yield wire.quiet())]
    assert answers == ["subscribed", None]
    wire.feed(f"<presence type='probe' from='alice@example.org' to='{DOMAIN}'/>")
    probe = yield wire.wait(lambda el: el.name == "presence")
    assert probe.getAttribute("type") is None and find(probe, "c")["ver"] == wire.stream.presence.disco.ver

    wire.feed(f"<presence type='unsubscribe' from='alice@example.org' to='{DOMAIN}'/>")
    assert (yield wire.quiet()) == []
    wire.feed(f"<presence type='probe' from='alice@example.org' to='{DOMAIN}'/>")
    assert (yield wire.quiet()) == []
    assert (yield wire.stream.presence.announce("unavailable")) == 1
    assert wire.sent() == []                                  # nothing more to an unsubscribed user

    wire.feed(f"<presence type='subscribe' from='alice@example.org' to='bob@{DOMAIN}'/>")
    contact = [(el["from"], el.getAttribute("type")) for el in (yield wire.quiet())]
    assert contact == [(f"bob@{DOMAIN}", "subscribed"), (f"bob@{DOMAIN}", None)]


@pytest_twisted.inlineCallbacks
def test_jabber_iq_gateway(wire):
    prompt = yield wire.iq("get", "<query xmlns='jabber:iq:gateway'/>")
    assert find(prompt, "query", "desc") is not None and find(prompt, "query", "prompt") is not None
    answer = yield wire.iq("set", "<query xmlns='jabber:iq:gateway'><prompt>o'hara@x.org</prompt></query>",
                           iq_id="t")
    assert str(find(answer, "query", "jid")) == f"o\\27hara\\40x.org@{DOMAIN}"
    bad = yield wire.iq("set", "<query xmlns='jabber:iq:gateway'><prompt>   </prompt></query>", iq_id="b")
    assert error_of(bad)[0] == "not-acceptable"
    none = yield wire.iq("set", "<query xmlns='jabber:iq:gateway'/>", iq_id="n")
    assert error_of(none)[0] == "bad-request"


# -- messages -------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_messages_receipts_chat_states_and_oob(wire):
    wire.feed(f"<message from='alice@example.org/phone' to='bob@{DOMAIN}' id='x1' type='chat'><body>hi</body></message>")
    err = yield wire.wait(lambda el: el.getAttribute("id") == "x1")
    assert error_of(err)[0] == "registration-required"
    yield wire.register()
    wire.sent()
    wire.feed(f"<message from='alice@example.org/phone' to='bob\\40far.org@{DOMAIN}' id='x2' type='chat'>"
              "<body>hello</body><subject>s</subject><thread>t1</thread><request xmlns='urn:xmpp:receipts'/>"
              "<x xmlns='jabber:x:oob'><url>https://f.example/a.png</url></x></message>")
    echo = yield wire.wait(lambda el: el.name == "message" and find(el, "body") is not None)
    assert echo["from"] == f"bob\\40far.org@{DOMAIN}" and echo["to"] == "alice@example.org"
    assert str(find(echo, "body")) == "hello\nhttps://f.example/a.png"
    assert (str(find(echo, "subject")), str(find(echo, "thread"))) == ("s", "t1")
    assert str(find(echo, "x", "url")) == "https://f.example/a.png"
    receipt = yield wire.wait(lambda el: find(el, "received") is not None)
    assert receipt["to"] == "alice@example.org/phone" and find(receipt, "received")["id"] == "x2"

    wire.feed(f"<message from='alice@example.org/phone' to='bob@{DOMAIN}' type='chat'>"
              "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    state = yield wire.wait(lambda el: el.name == "message")
    assert find(state, "composing") is not None and find(state, "body") is None


@pytest_twisted.inlineCallbacks
def test_message_errors(wire):
    yield wire.register()
    wire.sent()
    wire.feed(f"<message from='alice@example.org/phone' to='wall@{DOMAIN}' id='w' type='chat'><body>x</body></message>")
    err = yield wire.wait(lambda el: el.getAttribute("id") == "w")
    assert err["type"] == "error" and err["from"] == f"wall@{DOMAIN}" and err["to"] == "alice@example.org/phone"
    assert error_of(err) == ("not-acceptable", "wall does not accept messages")
    wire.feed(f"<message from='alice@example.org/phone' to='{DOMAIN}' id='g' type='chat'><body>x</body></message>")
    err = yield wire.wait(lambda el: el.getAttribute("id") == "g")
    assert error_of(err)[0] == "service-unavailable"
    wire.feed(f"<message from='alice@example.org/phone' to='down@{DOMAIN}' id='d' type='chat'><body>x</body></message>")
    err = yield wire.wait(lambda el: el.getAttribute("id") == "d", timeout=5)
    cond, text = error_of(err)
    assert cond == "remote-server-timeout" and "within 1 s" in text
    wire.feed(f"<message from='alice@example.org/phone' to='bob@{DOMAIN}' type='error'><body>x</body></message>")
    assert (yield wire.quiet()) == []                       # never an error to an error


# -- XEP-0050 -------------------------------------------------------------------

def command(node: str, session: str | None = None, action: str | None = None, form: str = "") -> str:
    attrs = f" node='{node}'" + (f" sessionid='{session}'" if session else "") + (f" action='{action}'" if action else "")
    return f"<command xmlns='http://jabber.org/protocol/commands'{attrs}>{form}</command>"


@pytest_twisted.inlineCallbacks
def test_user_commands(wire):
    refused = yield wire.iq("set", command("settings"))
    assert error_of(refused)[0] == "registration-required"
    yield wire.register()
    first = yield wire.iq("set", command("settings"), iq_id="s1")
    cmd = find(first, "command")
    assert cmd["status"] == "executing" and "prefix" in values_of(find(cmd, "x"))
    form = ("<x xmlns='jabber:x:data' type='submit'><field var='prefix'><value>&gt; </value></field>"
            "<field var='echo_chat_states'><value>0</value></field></x>")
    done = yield wire.iq("set", command("settings", cmd["sessionid"], "complete", form), iq_id="s2")
    assert find(done, "command")["status"] == "completed"
    reg = yield wire.registry.get_registration(DOMAIN, "alice@example.org")
    assert reg.settings["prefix"] == "> " and reg.settings["echo_chat_states"] is False
    stale = yield wire.iq("set", command("settings", cmd["sessionid"], "complete", form), iq_id="s3")
    assert error_of(stale)[0] == "bad-request"
    assert find(stale, "error", "bad-sessionid") is not None

    start = yield wire.iq("set", command("unregister"), iq_id="u1")
    session = find(start, "command")["sessionid"]
    cancel = yield wire.iq("set", command("unregister", session, "cancel"), iq_id="u2")
    assert find(cancel, "command")["status"] == "canceled"
    assert (yield wire.registry.get_registration(DOMAIN, "alice@example.org")) is not None
    start = yield wire.iq("set", command("unregister"), iq_id="u3")
    session = find(start, "command")["sessionid"]
    yes = "<x xmlns='jabber:x:data' type='submit'><field var='confirm'><value>true</value></field></x>"
    yield wire.iq("set", command("unregister", session, "complete", yes), iq_id="u4")
    assert (yield wire.registry.get_registration(DOMAIN, "alice@example.org")) is None


@pytest_twisted.inlineCallbacks
def test_admin_commands(wire):
    yield wire.register(user="alice@example.org/a", username="alice")
    yield wire.register(user="bob@example.org/b", username="bob")
    denied = yield wire.iq("set", command("stats"), iq_id="d")
    assert error_of(denied)[0] == "forbidden"
    items = yield wire.iq("get", "<query xmlns='http://jabber.org/protocol/disco#items' "
                                 "node='http://jabber.org/protocol/commands'/>", sender="boss@example.org/desk", iq_id="i")
    assert {i["node"] for i in children(find(items, "query"), "item")} == \
        {"settings", "configure", "unregister", "hello", "ping", "list-users", "stats", "delete-user", "status-page",
         "reload"}
    listing = yield wire.iq("set", command("list-users"), sender="boss@example.org/desk", iq_id="l")
    assert values_of(find(listing, "command", "x"))["registered-users"] == ["alice@example.org", "bob@example.org"]
    stats = yield wire.iq("set", command("stats"), sender="boss@example.org/desk", iq_id="st")
    assert values_of(find(stats, "command", "x"))["registered-users"] == "2"
    start = yield wire.iq("set", command("delete-user"), sender="boss@example.org/desk", iq_id="d1")
    session = find(start, "command")["sessionid"]
    form = "<x xmlns='jabber:x:data' type='submit'><field var='jid'><value>bob@example.org</value></field></x>"
    done = yield wire.iq("set", command("delete-user", session, "complete", form), sender="boss@example.org/desk",
                         iq_id="d2")
    assert "bob@example.org is deleted" in str(find(done, "command", "note"))
    assert (yield wire.registry.get_registration(DOMAIN, "bob@example.org")) is None
    unknown = yield wire.iq("set", command("self-destruct"), sender="boss@example.org/desk", iq_id="x")
    assert error_of(unknown)[0] == "item-not-found"


@pytest_twisted.inlineCallbacks
def test_inbound_is_held_while_the_stream_is_down(wire):
    yield wire.register()
    from gateway.model import InboundMessage

    wire.stream.authenticated = False              # as between a disconnect and the next handshake
    yield wire.bridge.deliver(InboundMessage(DOMAIN, "alice@example.org", "bob", body="while you were away"))
    assert (yield wire.registry.queue_depth(DOMAIN))["in"] == 1
    wire.stream.authenticated = True
    yield wire.bridge.stream_up()
    held = yield wire.wait(lambda el: find(el, "body") is not None)
    assert str(find(held, "body")) == "while you were away"
    # Written, but XEP-0114 has no acks: the row stays until the server answers the ping written after it.
    barrier = yield wire.wait(lambda el: el.name == "iq" and find(el, "ping") is not None)
    yield wire.quiet(0.2)
    assert (yield wire.registry.queue_depth(DOMAIN))["in"] == 1
    wire.feed(barrier.toXml())
    for _ in range(100):
        if (yield wire.registry.queue_depth(DOMAIN))["in"] == 0:
            break
        yield wire.quiet(0.02)
    assert (yield wire.registry.queue_depth(DOMAIN))["in"] == 0


@pytest_twisted.inlineCallbacks
def test_keepalive_pings_drop_a_dead_stream(tmp_path):
    from twisted.internet import task

    clock = task.Clock()
    w = yield Wire(os.path.join(tmp_path, "ka.sqlite"), clock=clock,
                   xmpp={"ping_interval": 30.0, "ping_timeout": 10.0}).start()
    try:
        clock.advance(30)
        ping = next(el for el in w.sent() if el.name == "iq")
        # From and to our own probe JID: it comes back on this connection, whatever the server balances.
        assert ping["to"] == ping["from"] and ping["to"].startswith("gw-probe-") and ping["type"] == "get"
        assert ping["to"].endswith(f"@{DOMAIN}")
        assert find(ping, "ping").uri == "urn:xmpp:ping"
        w.feed(ping.toXml())                                          # the server routed it back to us
        assert not [el for el in w.sent() if el.name == "iq"]          # not answered: it was our own
        clock.advance(10)
        assert not w.transport.disconnected
        clock.advance(20)
        assert any(el.name == "iq" for el in w.sent())                 # the next ping, left unanswered
        clock.advance(9)
        assert not w.transport.disconnected
        clock.advance(1)
        assert w.transport.disconnected                                 # aborted: the stream will reconnect
    finally:
        w.stop()


def test_adapter_runs_as_a_service_of_its_bridge(wire):
    """Adapters with threads or connections rely on startService/stopService being called."""
    assert wire.bridge.adapter.running
    wire.bridge.stopService()
    assert not wire.bridge.adapter.running
    wire.bridge.startService()


@pytest_twisted.inlineCallbacks
def test_room_events_made_while_the_stream_is_down_are_sent_after_it_is_back(wire):
    """A self-presence produced during a reconnect used to be dropped: the user never saw the join."""
    from gateway.model import RoomEvent

    wire.stream.authenticated = False
    wire.bridge.room_event(RoomEvent(DOMAIN, "alice@example.org", ["phone"], "#chan%irc.example.org", "presence",
                                     nick="alice", own=True))
    assert [el for el in (yield wire.quiet(0.1)) if el.name == "presence"] == []
    wire.stream.authenticated = True
    yield wire.bridge.stream_up()
    presence = yield wire.wait(lambda el: el.name == "presence")
    assert presence["to"] == "alice@example.org/phone" and presence["from"].endswith("/alice")


@pytest_twisted.inlineCallbacks
def test_every_request_gets_an_answer(wire):
    """IQs no handler takes used to get no reply at all (RFC 6120 §8.2.3): the client waited for ever."""
    vcard = yield wire.iq("get", "<vCard xmlns='vcard-temp'/>", to=f"bob@{DOMAIN}", iq_id="v1")
    assert (vcard["type"], error_of(vcard)[0]) == ("error", "service-unavailable")
    last = yield wire.iq("get", "<query xmlns='jabber:iq:last'/>", iq_id="l1")
    assert (last["type"], error_of(last)[0]) == ("error", "service-unavailable")
    kick = yield wire.iq("set", "<query xmlns='http://jabber.org/protocol/muc#admin'><item nick='x' role='none'/>"
                                "</query>", to=f"room@{DOMAIN}", iq_id="k1")
    assert (kick["type"], error_of(kick)[0]) == ("error", "feature-not-implemented")
    version = yield wire.iq("get", "<query xmlns='jabber:iq:version'/>", iq_id="ver1")
    assert version["type"] == "result"
    assert [el for el in (yield wire.quiet(0.2)) if el.name == "iq"] == []     # one answer each, no second one


@pytest_twisted.inlineCallbacks
def test_requests_without_exactly_one_payload_are_bad_requests(wire):
    """
    RFC 6120 §8.2.3: a get or set carries exactly one payload. None, or two,
    is ``bad-request`` before any handler sees it: a handler matching the first
    child (disco#info, ping) would otherwise answer as if the second were not
    there. Prosody checks this for its own clients, not for stanzas from other
    servers or components, so the gateway must.
    """
    cases = [("get", "", DOMAIN), ("set", "", f"bob@{DOMAIN}"), ("get", "  ", DOMAIN),
             ("get", "<query xmlns='http://jabber.org/protocol/disco#info'/><ping xmlns='urn:xmpp:ping'/>", DOMAIN),
             ("get", "<ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/>", f"bob@{DOMAIN}"),
             ("set", "<query xmlns='jabber:iq:register'><remove/></query><x xmlns='urn:example'/>", DOMAIN),
             ("set", "<vCard xmlns='vcard-temp'/><query xmlns='urn:example:nothing'/>", f"bob@{DOMAIN}")]
    for n, (itype, payload, to) in enumerate(cases):
        reply = yield wire.iq(itype, payload, to=to, iq_id=f"shape{n}")
        assert (reply["type"], error_of(reply)[0]) == ("error", "bad-request"), (itype, payload, reply.toXml())
    assert [el for el in (yield wire.quiet(0.2)) if el.name == "iq"] == []     # one answer each, no second one
    pong = yield wire.iq("get", "<ping xmlns='urn:xmpp:ping'/>", iq_id="shape-ok")
    assert pong["type"] == "result"


@pytest_twisted.inlineCallbacks
def test_a_user_holds_at_most_ten_command_sessions_and_the_oldest_ends(wire):
    """
    A client looping on execute cannot grow memory: the 11th session a user
    opens ends their oldest (``bad-sessionid`` when it comes back); the other
    ten, and another user's session, stay usable.
    """
    from gateway.xmpp.commands import MAX_SESSIONS_PER_USER

    assert MAX_SESSIONS_PER_USER == 10                       # the number docs/security.md states
    yield wire.register(user="alice@example.org/phone", username="alice")
    yield wire.register(user="bob@example.org/b", username="bob")
    bobs = yield wire.iq("set", command("settings"), sender="bob@example.org/b", iq_id="b0")
    sessions = []
    for n in range(MAX_SESSIONS_PER_USER + 1):
        started = yield wire.iq("set", command("settings"), iq_id=f"open{n}")
        sessions.append(find(started, "command")["sessionid"])
    assert len(set(sessions)) == MAX_SESSIONS_PER_USER + 1
    form = "<x xmlns='jabber:x:data' type='submit'><field var='prefix'><value>p</value></field></x>"
    oldest = yield wire.iq("set", command("settings", sessions[0], "complete", form), iq_id="oldest")
    assert error_of(oldest)[0] == "bad-request" and find(oldest, "error", "bad-sessionid") is not None
    for n, session in enumerate(sessions[1:]):
        done = yield wire.iq("set", command("settings", session, "complete", form), iq_id=f"done{n}")
        assert find(done, "command")["status"] == "completed", done.toXml()
    bob_done = yield wire.iq("set", command("settings", find(bobs, "command")["sessionid"], "complete", form),
                             sender="bob@example.org/b", iq_id="b1")
    assert find(bob_done, "command")["status"] == "completed"
