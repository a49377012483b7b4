"""
Hostile stanzas from an XMPP client against the real gateway: requests nobody
handles, absurd XEP-0059 paging, JIDs that are not what XEP-0106 escaping
makes, addresses no JID can carry, and data forms of the wrong shape. Each
must get an answer with the right error condition, change nothing, and leave
the component stream up for everyone.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import xml.etree.ElementTree as ET

import pytest

from gateway.testing.ngircd import Ngircd
from tests.hostile.conftest import COMPONENTS, start_gateway
from tests.integration.gateway_fixture import registered_client
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.integration.harness import TIMEOUT, Client, _escape, body, error_condition, run

DOMAIN = "hxmpp.localhost"
#: Another component on the same Prosody (ComponentPeer), allowed to use the gateway.
PEER = "hxmppc.localhost"
IRC_DOMAIN = "hxmpp2.localhost"
NS_XDATA = "jabber:x:data"
NS_REG = "jabber:iq:register"
NS_CMD = "http://jabber.org/protocol/commands"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_RSM = "http://jabber.org/protocol/rsm"


@pytest.fixture(scope="module")
def echo_gw(hostile_prosody, workdir):
    path = os.path.join(workdir, "hxmpp")
    os.makedirs(path, exist_ok=True)
    admin = hostile_prosody.register(f"hxadmin{os.getpid()}", "pw")
    # PEER's stanzas are let in, so a handler would see its malformed requests (see below).
    gateway = start_gateway(hostile_prosody, path, "hxmpp", admins=[admin], allowed_domains=("localhost", PEER))
    gateway.admin = admin
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def ircd(workdir):
    server = Ngircd(os.path.join(workdir, "ngircd-hxmpp")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def irc_gw(hostile_prosody, ircd, workdir):
    path = os.path.join(workdir, "hxmpp2")
    os.makedirs(path, exist_ok=True)
    gateway = start_gateway(hostile_prosody, path, "hxmpp2", adapter="irc", options={
        "servers": {"localhost": {"host": "127.0.0.1", "port": ircd.port, "tls": False}},
        "throttle_rate": 0.0, "allowed_servers": ["localhost"]})
    yield gateway
    gateway.stop()


_ids = itertools.count()


async def raw_answer(client: Client, to: str, kind: str, payload: str) -> tuple[str, ET.Element]:
    """
    (type, element) of the answer to an IQ, read as raw XML: slixmpp cannot parse
    every RFC 6120 condition (it lacks policy-violation, which the gateway's own
    stanza size limit answers), and must not decide what an answer is here.
    """
    iq_id = f"raw{os.getpid()}-{next(_ids)}"
    answer = asyncio.get_running_loop().create_future()

    def got(stanza):
        if stanza.xml.get("id") == iq_id and not answer.done():
            answer.set_result(stanza.xml)

    client.register_handler(Callback(f"answer {iq_id}", MatchXPath("{jabber:client}iq"), got))
    try:
        client.send_raw(f"<iq xmlns='jabber:client' type='{kind}' id='{iq_id}' to='{_escape(to)}'>{payload}</iq>")
        xml = await asyncio.wait_for(answer, TIMEOUT)
    finally:
        client.remove_handler(f"answer {iq_id}")
    return xml.get("type"), xml


async def still_echoes(client: Client, text: str = "still here", prefix: str = "") -> None:
    """The component stream is up and serving: an echo comes back."""
    client.send_chat(f"echo@{DOMAIN}", text)
    reply = await client.next_message(lambda m: body(m) == prefix + text)
    assert reply.get("from") == f"echo@{DOMAIN}"


# -- requests nobody handles ------------------------------------------------------

UNHANDLED = [
    (f"bob@{DOMAIN}", "get", "<vCard xmlns='vcard-temp'/>", "service-unavailable"),
    (DOMAIN, "get", "<query xmlns='jabber:iq:last'/>", "service-unavailable"),
    (DOMAIN, "get", "<query xmlns='jabber:iq:private'><x xmlns='urn:example'/></query>", "service-unavailable"),
    (DOMAIN, "set", "<query xmlns='urn:example:nothing'/>", "service-unavailable"),
    (f"bob@{DOMAIN}", "set", "<anything xmlns='urn:example:nothing'><deep><deeper/></deep></anything>",
     "service-unavailable"),
    (f"bob@{DOMAIN}", "get", "<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='x'/></pubsub>",
     "service-unavailable"),
    (f"room@{DOMAIN}", "set", "<query xmlns='http://jabber.org/protocol/muc#admin'><item nick='x' role='none'/>"
     "</query>", "feature-not-implemented"),
    (f"room@{DOMAIN}", "get", "<query xmlns='http://jabber.org/protocol/muc#owner'/>", "feature-not-implemented"),
]


def test_requests_nobody_handles_are_answered(hostile_prosody, echo_gw):
    async def scenario():
        client = await registered_client(hostile_prosody, DOMAIN, "hxiq", Client)
        try:
            for to, kind, payload, expected in UNHANDLED:
                condition, _ = await client.iq_error(to, kind, payload)
                assert condition == expected, (to, payload, condition)
            await still_echoes(client)
        finally:
            await client.stop()

    run(scenario())


#: IQ get/set without exactly one payload child (RFC 6120 §8.2.3): ``bad-request``,
#: whoever would handle the first child (disco#info and ping are answered here).
MALFORMED_IQS = [
    (DOMAIN, "get", ""),
    (f"bob@{DOMAIN}", "set", ""),
    (DOMAIN, "get", "   "),
    (DOMAIN, "get", "<query xmlns='http://jabber.org/protocol/disco#info'/><ping xmlns='urn:xmpp:ping'/>"),
    (DOMAIN, "get", "<ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/>"),
    (f"bob@{DOMAIN}", "set", "<vCard xmlns='vcard-temp'/><query xmlns='urn:example:nothing'/>"),
]


def test_requests_without_exactly_one_payload_are_bad_requests(hostile_prosody, echo_gw):
    """
    End to end, what a client sees. Prosody itself answers these for its own
    clients (``Incorrect number of children``), so this case passes whatever
    the gateway does; the gateway's own check, for stanzas Prosody does not
    check, is shown by the next case (from another component) and by
    tests/unit/test_handlers.py::test_requests_without_exactly_one_payload_are_bad_requests.
    """
    async def scenario():
        client = await registered_client(hostile_prosody, DOMAIN, "hxshape", Client)
        try:
            for to, kind, payload in MALFORMED_IQS:
                answer_type, answer = await raw_answer(client, to, kind, payload)
                assert answer_type == "error", (to, kind, payload, ET.tostring(answer))
                assert error_condition(answer)[0] == "bad-request", (to, kind, payload, ET.tostring(answer))
            # A well-formed request to the same handler is still answered.
            answer_type, _ = await raw_answer(client, DOMAIN, "get", "<ping xmlns='urn:xmpp:ping'/>")
            assert answer_type == "result"
            await still_echoes(client)
        finally:
            await client.stop()

    run(scenario())


class ComponentPeer:
    """
    Another XEP-0114 component on the session's Prosody, speaking raw XML:
    Prosody checks IQ shape only for its own clients, so what this peer sends
    reaches the gateway as written (as a remote server's stanzas would).
    """

    async def start(self, port: int, domain: str, secret: str) -> "ComponentPeer":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth, self.stanzas, self.stream_id = 0, [], None
        self.writer.write(f"<stream:stream xmlns='jabber:component:accept' xmlns:stream="
                          f"'http://etherx.jabber.org/streams' to='{domain}'>".encode())
        while self.stream_id is None:
            await self._read()
        digest = hashlib.sha1((self.stream_id + secret).encode()).hexdigest()
        self.writer.write(f"<handshake>{digest}</handshake>".encode())
        await self.next(lambda el: el.tag.endswith("}handshake"))
        return self

    async def _read(self) -> None:
        data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
        assert data, "Prosody closed the component stream"
        self.parser.feed(data)
        for event, el in self.parser.read_events():
            if event == "start":
                self.depth += 1
                if self.depth == 1:
                    self.stream_id = el.get("id")
            else:
                self.depth -= 1
                if self.depth == 1:
                    self.stanzas.append(el)

    async def next(self, predicate) -> ET.Element:
        while True:
            for i, el in enumerate(self.stanzas):
                if predicate(el):
                    return self.stanzas.pop(i)
            await self._read()

    def send(self, xml: str) -> None:
        self.writer.write(xml.encode())

    def close(self) -> None:
        self.writer.close()


def test_requests_without_exactly_one_payload_from_a_peer_prosody_does_not_check(hostile_prosody, echo_gw):
    """
    The two-payload IQs from another component (Prosody passes them on
    unchecked), a domain the gateway serves: it answers ``bad-request`` itself
    (before the fix: the disco#info handler answered the first of two payloads
    as if the second were not there); its stream stays up. No childless IQ here: Prosody
    0.12's mod_iq fails on one from a component and drops that component's
    stream before routing it (the unit test covers the gateway's answer).
    """
    async def scenario():
        peer = await ComponentPeer().start(hostile_prosody.component_port, PEER, COMPONENTS[PEER])
        client = await registered_client(hostile_prosody, DOMAIN, "hxpeer", Client)
        try:
            for n, (to, kind, payload) in enumerate(p for p in MALFORMED_IQS if p[2].strip()):
                iq_id = f"peer{os.getpid()}-{n}"
                peer.send(f"<iq xmlns='jabber:component:accept' type='{kind}' id='{iq_id}' from='{PEER}' "
                          f"to='{_escape(to)}'>{payload}</iq>")
                answer = await peer.next(lambda el: el.get("id") == iq_id)
                assert answer.get("type") == "error" and answer.get("from") == to, ET.tostring(answer)
                err = answer.find("{jabber:component:accept}error")
                conditions = [c.tag.split("}")[1] for c in err if "xmpp-stanzas" in c.tag and "text" not in c.tag]
                assert conditions == ["bad-request"], (payload, ET.tostring(answer))
            await still_echoes(client)
        finally:
            peer.close()
            await client.stop()

    run(scenario())


# -- XEP-0059 paging with absurd values ---------------------------------------------

def rsm(*children: str) -> str:
    return f"<query xmlns='{NS_ITEMS}'><set xmlns='{NS_RSM}'>{''.join(children)}</set></query>"


async def answer_of(client: Client, to: str, payload: str) -> tuple[str, ET.Element | str]:
    """('result', element) or ('error', condition): an answer, whichever it is (none fails the test)."""
    kind, answer = await raw_answer(client, to, "get", payload)
    return (kind, answer) if kind == "result" else (kind, error_condition(answer)[0])


def test_absurd_result_set_values_are_answered(hostile_prosody, irc_gw):
    server = f"localhost@{IRC_DOMAIN}"
    user = hostile_prosody.register(f"hxrsm{os.getpid()}", "pw")

    async def scenario():
        client = await Client(user, "pw").start(hostile_prosody.c2s_port)
        try:
            for bad in ("-1", "-99999999999999999999", "lots", "1e3", "2.5", "0x10", "9" * 5000):
                assert await answer_of(client, server, rsm(f"<max>{bad}</max>")) == ("error", "bad-request"), bad
            # Huge but whole: a page with everything there is, and the count.
            kind, page = await answer_of(client, server, rsm(f"<max>{'9' * 30}</max>"))
            assert kind == "result" and page.find(f".//{{{NS_RSM}}}count") is not None
            # Ids no list holds, garbage, or huge: an empty page, not an error and not silence.
            for after in ("#nope", "\u202egarbage\u200e", "x" * 60_000, "&lt;&gt;&amp;"):
                kind, page = await answer_of(client, server, rsm("<max>5</max>", f"<after>{after}</after>"))
                assert kind == "result" and page.findall(f".//{{{NS_ITEMS}}}item") == []
            # Past the component's stanza size limit: refused before anything parses it.
            assert await answer_of(client, server, rsm("<max>5</max>", f"<after>{'x' * 100_000}</after>")) == \
                ("error", "policy-violation")
            for extra in ("<max/>", "<max> </max>", "<index>5</index>", "<index>-3</index>", "<index>zz</index>", "<before/>",
                          "<before>x</before>", "<max>1</max><max>2</max>"):
                kind, _ = await answer_of(client, server, rsm(extra))
                assert kind in ("result", "error"), extra
        finally:
            await client.stop()

    run(scenario(), timeout=120)


# -- JIDs ---------------------------------------------------------------------------

@pytest.mark.parametrize("localpart", ["\\20bob", "bob\\20", "bo\\5cb", "a\\5c\\5cz"])
def test_writing_to_a_jid_no_address_escapes_to_is_jid_malformed(hostile_prosody, echo_gw, localpart):
    """
    Two JIDs must never name one foreign address: ``bo\\5cb`` would unescape to the address
    ``bo\\b`` is for, and ``\\20bob`` to one XEP-0106 forbids.
    """
    async def scenario():
        client = await registered_client(hostile_prosody, DOMAIN, "hxjid", Client)
        try:
            to = f"{localpart}@{DOMAIN}"
            msg_id = client.send_chat(to, "to a strange jid")
            err = await client.next_message(lambda m: m.get("id") == msg_id)
            condition, text = error_condition(err)
            assert (err.get("type"), condition) == ("error", "jid-malformed")
            assert text and ("XEP-0106" in text or "space" in text)
            # nothing was sent anywhere: no echo comes back from any spelling of it
            assert await client.quiet(seconds=1.0, predicate=lambda m: body(m) == "to a strange jid"
                                      and m.get("type") != "error") == []
            await still_echoes(client)
        finally:
            await client.stop()

    run(scenario())


@pytest.mark.parametrize("address", ["ACME\u00a0BANK", "tab\there", "lrm\u200emark", "wide\u3000space",
                                     "priv\ue000ate", "abc\u05d0\u05d1"])
def test_gateway_prompt_refuses_addresses_no_jid_can_carry(hostile_prosody, echo_gw, address):
    """XEP-0100's jabber:iq:gateway must not hand out a JID the XMPP server would refuse."""
    async def scenario():
        client = await registered_client(hostile_prosody, DOMAIN, "hxprompt", Client)
        try:
            condition, text = await client.iq_error(DOMAIN, "set", "<query xmlns='jabber:iq:gateway'>"
                                                    f"<prompt>{address}</prompt></query>")
            assert condition in ("not-acceptable", "jid-malformed") and text
            ok = await client.iq(DOMAIN, "set", "<query xmlns='jabber:iq:gateway'><prompt>plain</prompt></query>")
            assert ok.find("{jabber:iq:gateway}query/{jabber:iq:gateway}jid").text == f"plain@{DOMAIN}"
        finally:
            await client.stop()

    run(scenario())


# -- forms of the wrong shape ------------------------------------------------------------

def form(*fields: str, kind: str = "submit", form_type: str | None = NS_REG) -> str:
    ft = (f"<field var='FORM_TYPE' type='hidden'><value>{form_type}</value></field>" if form_type else "")
    return f"<x xmlns='{NS_XDATA}' type='{kind}'>{ft}{''.join(fields)}</x>"


def field(var: str, *values: str, kind: str | None = None) -> str:
    t = f" type='{kind}'" if kind else ""
    return f"<field var='{var}'{t}>" + "".join(f"<value>{v}</value>" for v in values) + "</field>"


BAD_REGISTRATIONS = [
    ("list-multi where text-single is offered",
     form(field("username", "a", "b", kind="list-multi")), "bad-request"),
    ("two values for a single field", form(field("username", "a", "b")), "bad-request"),
    ("a field given twice", form(field("username", "a"), field("username", "b")), "bad-request"),
    ("a field the form does not have", form(field("username", "a"), field("admin", "1")), "not-acceptable"),
    ("another form's FORM_TYPE", form(field("username", "a"), form_type="urn:example:other"), "bad-request"),
    ("a result form submitted", form(field("username", "a"), kind="result"), "bad-request"),
    ("a blank form submitted", form(field("username", "a"), kind="form"), "bad-request"),
    ("a cancel form", form(kind="cancel"), "bad-request"),
    # Past the component's stanza size limit (64 KiB by default) before any form code sees it.
    ("10,000 fields", form(*(f"<field var='f{i}'/>" for i in range(10000))), "policy-violation"),
    ("1,000 fields", form(*(f"<field var='f{i}'/>" for i in range(1000))), "bad-request"),
    # (1 MB does not even reach the gateway: Prosody's c2s_stanza_size_limit, 256 KiB, ends
    # that client's stream first.)
    ("a 200 kB value", form(field("username", "u" * 200_000)), "policy-violation"),
    ("a 50 kB value", form(field("username", "u" * 50_000)), "bad-request"),
    ("a field without var", form("<field><value>x</value></field>"), "bad-request"),
]


def test_registration_forms_of_the_wrong_shape_are_refused(hostile_prosody, echo_gw):
    async def scenario():
        client = await registered_client(hostile_prosody, DOMAIN, "hxform", Client)
        try:
            for what, x, expected in BAD_REGISTRATIONS:
                kind, answer = await raw_answer(client, DOMAIN, "set", f"<query xmlns='{NS_REG}'>{x}</query>")
                condition, text = error_condition(answer)
                assert kind == "error" and condition == expected and text, (what, condition, text)
            # Nothing changed: the registration is the one made first.
            current = await client.iq(DOMAIN, "get", f"<query xmlns='{NS_REG}'/>")
            assert current.find(f"{{{NS_REG}}}query/{{{NS_REG}}}username").text == "hxform"
            # A client that leaves FORM_TYPE out is understood: the query says what the form is.
            await client.iq(DOMAIN, "set", f"<query xmlns='{NS_REG}'>{form(field('username', 'hxform2'), form_type=None)}"
                                           "</query>")
            current = await client.iq(DOMAIN, "get", f"<query xmlns='{NS_REG}'/>")
            assert current.find(f"{{{NS_REG}}}query/{{{NS_REG}}}username").text == "hxform2"
            await still_echoes(client)
        finally:
            await client.stop()

    run(scenario())


async def execute(client: Client, node: str, to: str = DOMAIN) -> str:
    first = await client.iq(to, "set", f"<command xmlns='{NS_CMD}' node='{node}' action='execute'/>")
    return first.find(f"{{{NS_CMD}}}command").get("sessionid")


def complete(node: str, session: str, x: str) -> str:
    return f"<command xmlns='{NS_CMD}' node='{node}' sessionid='{session}' action='complete'>{x}</command>"


def test_command_forms_of_the_wrong_shape_are_refused(hostile_prosody, echo_gw):
    async def scenario():
        client = await registered_client(hostile_prosody, DOMAIN, "hxcmd", Client)
        admin = await Client(echo_gw.admin, "pw").start(hostile_prosody.c2s_port)
        try:
            session = await execute(client, "settings")
            bad = [form(field("echo_chat_states", "maybe"), form_type=NS_CMD),
                   form(field("echo_chat_states", "1", "0"), form_type=NS_CMD),
                   form(field("echo_chat_states", "1", kind="list-multi"), form_type=NS_CMD),
                   form(field("prefix", "a", "b"), form_type=NS_CMD),
                   form(field("prefix", "p" * 20000), form_type=NS_CMD),
                   form(field("prefix", "x"), kind="result", form_type=NS_CMD),
                   form(field("nosuch", "x"), form_type=NS_CMD)]
            for x in bad:
                condition, text = await client.iq_error(DOMAIN, "set", complete("settings", session, x))
                assert condition in ("bad-request", "not-acceptable") and text, (x[:120], condition)
            # The session stays open for a corrected form, and only that is saved.
            done = await client.iq(DOMAIN, "set", complete("settings", session, form(
                field("prefix", "> "), field("echo_chat_states", "false"), form_type=NS_CMD)))
            assert done.find(f"{{{NS_CMD}}}command").get("status") == "completed"
            client.send_chat(f"echo@{DOMAIN}", "prefixed")
            reply = await client.next_message(lambda m: body(m) is not None)
            assert body(reply) == "> prefixed"

            # An admin command: a jid-single that is no JID.
            session = await execute(admin, "delete-user")
            for value in ("not a jid@@", "@", "a@b@c", "user@\u00a0host"):
                condition, _ = await admin.iq_error(DOMAIN, "set", complete("delete-user", session, form(
                    field("jid", value), form_type=NS_CMD)))
                assert condition == "bad-request", value
            # unregister's boolean: "maybe" is no confirmation, and no silent "no" either
            session = await execute(client, "unregister")
            condition, _ = await client.iq_error(DOMAIN, "set", complete("unregister", session, form(
                field("confirm", "maybe"), form_type=NS_CMD)))
            assert condition == "bad-request"
            await still_echoes(client, "still registered", prefix="> ")
        finally:
            await client.stop()
            await admin.stop()

    run(scenario())


# -- a child element named like the handlers' own flag ----------------------------

#: domish reads a missing attribute as the first child of that name, so ``getattr(stanza,
#: "handled", False)`` found a client's ``<handled/>`` element and took the stanza as
#: already handled: it was dropped with no answer at all.
HANDLED_CHILD = "<handled xmlns='urn:example:hostile'/>"


def test_a_handled_child_element_does_not_silence_a_message(hostile_prosody, echo_gw):
    async def scenario():
        client = await registered_client(hostile_prosody, DOMAIN, "hxhandled", Client)
        try:
            client.send_raw(f"<message xmlns='jabber:client' type='chat' to='echo@{DOMAIN}' id='hd1'>"
                            f"{HANDLED_CHILD}<body>with a handled child</body></message>")
            reply = await client.next_message(lambda m: body(m) == "with a handled child")
            assert reply.get("from") == f"echo@{DOMAIN}"
            await client.quiet("presences", 0.5)                 # the gateway's presence at log-in
            client.send_raw(f"<presence xmlns='jabber:client' type='probe' to='{DOMAIN}'>{HANDLED_CHILD}</presence>")
            await client.next_presence(lambda p: p.get("from") == DOMAIN and p.get("type") is None)
        finally:
            await client.stop()

    run(scenario())


def test_a_handled_child_element_does_not_silence_a_room_line(hostile_prosody, ircd, irc_gw):
    from tests.integration.irc_support import RawIRC

    user = hostile_prosody.register(f"hxhroom{os.getpid()}", "pw")
    room = f"#handled%localhost@{IRC_DOMAIN}"

    async def scenario():
        bob = await RawIRC(ircd.port, "hbob").connect()
        bob.send("JOIN #handled")
        await bob.expect(lambda line: " 366 " in line)
        client = await Client(user, "pw").start(hostile_prosody.c2s_port)
        try:
            client.send_raw(f"<presence to='{room}/hnick'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
            await client.next_presence(lambda p: p.get("from") == f"{room}/hnick" and p.get("type") != "error")
            await bob.expect(lambda line: "JOIN" in line and "hnick" in line)
            client.send_raw(f"<message xmlns='jabber:client' type='groupchat' to='{room}' id='hd2'>"
                            f"{HANDLED_CHILD}<body>room line with a handled child</body></message>")
            line = await bob.expect(lambda line: "PRIVMSG #handled" in line)
            assert line.endswith(":room line with a handled child")
            client.send_raw(f"<presence xmlns='jabber:client' to='{room}/hnick' type='unavailable'>"
                            f"{HANDLED_CHILD}</presence>")
            await bob.expect(lambda line: ("PART #handled" in line or "QUIT" in line) and "hnick" in line)
        finally:
            await client.stop()
            await bob.close()

    run(scenario(), timeout=90)
