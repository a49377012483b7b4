"""
Corrections (XEP-0308), replies (XEP-0461), reactions (XEP-0444) and typing
(XEP-0085) as the other side sees them (issue 14), end to end: a real Prosody
with slixmpp users; InspIRCd 3 with its IRCv3 modules (message-tags: client
tags) and ngircd (none) with raw IRC clients; the SMTP smarthost; the SMS
simulator. Each test's name is cited by the table in docs/users.md.
"""

import asyncio
import email
import email.policy
import os
import secrets

import pytest

from gateway.testing.certs import self_signed
from gateway.testing.inspircd import InspIRCd
from gateway.testing.ngircd import Ngircd
from gateway.testing.process import free_port
from tests.integration.gateway_fixture import register_form, registered_client, start_gateway
from tests.integration.harness import Client, body, error_condition, run
from tests.integration.irc_support import RawIRC
from tests.integration.mail_support import SMARTHOST_PASSWORD, SMARTHOST_USER, Smarthost, swaks
from tests.integration.sms_support import TwilioSimulator, sms_options
from tests.integration.test_irc_services import CapIRC

PID = os.getpid() % 100000
IRC = "conv.localhost"
MAIL = "convmail.localhost"
SMS = "convsms.localhost"
MAIL_DOMAIN = "convmail.example.org"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_SID = "urn:xmpp:sid:0"
NS_REPLY = "urn:xmpp:reply:0"
NS_REACTIONS = "urn:xmpp:reactions:0"
NS_CORRECT = "urn:xmpp:message-correct:0"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"


def replace(xmpp_id: str) -> str:
    return f"<replace xmlns='{NS_CORRECT}' id='{xmpp_id}'/>"


def reply(to: str, xmpp_id: str, fallback: str) -> str:
    """XEP-0461 with its XEP-0428 fallback: the first len(fallback) characters of the body quote the original."""
    return (f"<reply xmlns='{NS_REPLY}' to='{to}' id='{xmpp_id}'/>"
            f"<fallback xmlns='urn:xmpp:fallback:0' for='{NS_REPLY}'><body start='0' end='{len(fallback)}'/>"
            "</fallback>")


def reactions(xmpp_id: str, *emoji: str) -> str:
    return (f"<reactions xmlns='{NS_REACTIONS}' id='{xmpp_id}'>"
            + "".join(f"<reaction>{e}</reaction>" for e in emoji) + "</reactions>")


def state(name: str) -> str:
    return f"<{name} xmlns='{NS_CHATSTATES}'/>"


# -- IRC -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ngircd(workdir):
    server = Ngircd(os.path.join(workdir, "ngircd-conv")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def inspircd(workdir):
    server = InspIRCd(os.path.join(workdir, "inspircd-conv"), sasl=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def irc_gateway(prosody, ngircd, inspircd, workdir):
    path = os.path.join(workdir, "conv-gw")
    os.makedirs(path, exist_ok=True)
    gw = start_gateway(prosody, path, "conv", adapter="irc", options={
        "servers": {"plain.test": {"host": "127.0.0.1", "port": ngircd.port, "tls": False},
                    "tags.test": {"host": "127.0.0.1", "port": inspircd.port, "tls": False}},
        "throttle_rate": 0.0, "allowed_servers": ["plain.test", "tags.test"]})
    yield gw
    gw.stop()


def room(channel: str, server: str) -> str:
    return f"{channel}%{server}@{IRC}"


async def join(client: Client, channel: str, nick: str, server: str):
    jid = room(channel, server)
    client.send_raw(f"<presence to='{jid}/{nick}'><x xmlns='{NS_MUC}'/></presence>")

    def own(p):
        codes = {s.get("code") for s in p.findall(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}status")}
        return p.get("from") == f"{jid}/{nick}" and "110" in codes

    return await client.next_presence(own, timeout=30)


def said(channel: str, text: str):
    """An IRC line carrying ``text`` to ``channel`` as a PRIVMSG (whatever tags it has)."""
    return lambda line: line.endswith(f" PRIVMSG {channel} :{text}")


async def irc_scenario(prosody, ircd_port: int, server: str, tags: bool):
    """
    The same conversation on both servers: the user's correction (short, then
    long), reply and reaction to what the raw client said, seen by that raw
    client; a correction of the raw client's message refused. Returns the raw
    client's lines for the caller to check the rest.
    """
    tag = "t" if tags else "p"
    channel = f"#conv{tag}{PID}"
    chan = room(channel, server)
    bob_nick = f"bob{tag}{PID}"[:16]
    user = prosody.register(f"conv{tag}{PID}", "pw")
    bob = await (CapIRC(ircd_port, bob_nick, caps="message-tags server-time") if tags
                 else RawIRC(ircd_port, bob_nick)).connect()
    # On the server with message-tags, someone whose client does not ask for it.
    plain = await RawIRC(ircd_port, f"noca{PID}"[:16]).connect() if tags else None
    alice = await Client(user, "pw").start(prosody.c2s_port)
    try:
        bob.send(f"JOIN {channel}")
        await bob.expect(lambda l: " JOIN " in l and channel in l)
        if plain is not None:
            plain.send(f"JOIN {channel}")
            await plain.expect(lambda l: " JOIN " in l and channel in l)
        await join(alice, channel, "alice", server)

        bob.send(f"PRIVMSG {channel} :where is the meeting?")
        heard = await alice.next_message(lambda m: body(m) == "where is the meeting?")
        assert heard.get("from") == f"{chan}/{bob_nick}"
        sid = heard.find(f"{{{NS_SID}}}stanza-id").get("id")      # the msgid on InspIRCd, the gateway's on ngircd

        # A correction: a short edit names the changed words; a long one is sent whole, marked.
        alice.send_chat(chan, "the quick brown fox", msg_id="fox1", mtype="groupchat")
        fox = await bob.expect(said(channel, "the quick brown fox"))
        alice.send_chat(chan, "the quick red fox", msg_id="fox2", mtype="groupchat", extra=replace("fox1"))
        await bob.expect(said(channel, "s/brown/red/"))
        reflected = await alice.next_message(lambda m: m.find(f"{{{NS_CORRECT}}}replace") is not None)
        assert body(reflected) == "the quick red fox" and reflected.get("from") == f"{chan}/alice"
        alice.send_chat(chan, "no fox at all, a lazy dog instead", msg_id="fox3", mtype="groupchat",
                        extra=replace("fox1"))
        await bob.expect(said(channel, "* no fox at all, a lazy dog instead"))

        # A reply to bob's line (the client's fallback quote is not sent again).
        quote = f"> {bob_nick}: where is the meeting?\n"
        alice.send_chat(chan, quote + "in room 4", mtype="groupchat", extra=reply(f"{chan}/{bob_nick}", sid, quote))
        if tags:
            line = await bob.expect(said(channel, f"{bob_nick}: in room 4"))
            assert f"+draft/reply={sid}" in line.split(" ", 1)[0]
        else:
            await bob.expect(said(channel, f"{bob_nick}: “where is the meeting?” in room 4"))

        # A reaction to bob's line.
        alice.send_chat(chan, None, mtype="groupchat", extra=reactions(sid, "👍"))
        if tags:
            line = await bob.expect(lambda l: f" TAGMSG {channel}" in l or f" TAGMSG :{channel}" in l)
            head = line.split(" ", 1)[0]
            assert "+draft/react=👍" in head and f"+draft/reply={sid}" in head
        else:
            await bob.expect(said(channel, f"{bob_nick}: Reacted 👍 to “where is the meeting?”"))
        # The same set again adds nothing; a second emoji only the new one.
        alice.send_chat(chan, None, mtype="groupchat", extra=reactions(sid, "👍", "🎉"))
        if tags:
            line = await bob.expect(lambda l: " TAGMSG " in l)
            assert "+draft/react=🎉" in line.split(" ", 1)[0]
        else:
            await bob.expect(said(channel, f"{bob_nick}: Reacted 🎉 to “where is the meeting?”"))

        # Correcting bob's message is refused, and nothing reaches IRC.
        alice.send_chat(chan, "words bob never said", msg_id="notmine", mtype="groupchat", extra=replace(sid))
        refused = await alice.next_message(lambda m: m.get("type") == "error" and m.get("id") == "notmine")
        assert error_condition(refused)[0] == "forbidden"
        alice.send_chat(chan, "after the refusal", mtype="groupchat")
        line = await bob.expect(lambda l: " PRIVMSG " in l)
        assert line.endswith(":after the refusal")
        if plain is not None:
            # Without message-tags: no reaction, no tags, the reply as "nick: text".
            await plain.expect(said(channel, "after the refusal"))
            assert not [l for l in plain.seen if " TAGMSG " in l or l.startswith("@")]
            assert [l for l in plain.seen if l.endswith(f"PRIVMSG {channel} :{bob_nick}: in room 4")]
            await plain.close()
        return bob, alice, chan, channel, bob_nick, sid, fox
    except BaseException:
        await alice.stop()
        await bob.close()
        if plain is not None:
            await plain.close()
        raise


def test_irc_with_message_tags_correction_reply_reaction_and_inbound_tags(prosody, inspircd, irc_gateway):
    """InspIRCd with message-tags: +draft/reply and +draft/react both ways, corrections as s/// or '* '."""

    async def scenario():
        bob, alice, chan, channel, bob_nick, sid, fox = await irc_scenario(prosody, inspircd.port, "tags.test",
                                                                           True)
        try:
            # bob answers, then reacts to, the user's own line: the gateway learnt its msgid from the
            # server's echo (echo-message), so both point at the user's message.
            fox_msgid = dict(t.partition("=")[::2] for t in fox[1:].split(" ", 1)[0].split(";"))["msgid"]
            bob.send(f"@+draft/reply={fox_msgid} PRIVMSG {channel} :what fox?")
            answered = await alice.next_message(lambda m: body(m) == "what fox?")
            link = answered.find(f"{{{NS_REPLY}}}reply")
            assert link is not None and link.get("id") == "fox1" and link.get("to") == f"{chan}/alice"
            bob.send(f"@+draft/reply={fox_msgid};+draft/react=🦊 TAGMSG {channel}")
            reacted = await alice.next_message(lambda m: m.find(f"{{{NS_REACTIONS}}}reactions") is not None)
            assert reacted.find(f"{{{NS_REACTIONS}}}reactions").get("id") == "fox1"

            # bob answers his own line with +draft/reply, then reacts to it: XEP-0461 and XEP-0444.
            bob.send(f"@+draft/reply={sid} PRIVMSG {channel} :answering myself")
            answered = await alice.next_message(lambda m: body(m) == "answering myself")
            link = answered.find(f"{{{NS_REPLY}}}reply")
            assert link is not None and link.get("id") == sid and link.get("to") == f"{chan}/{bob_nick}"
            bob.send(f"@+draft/reply={sid};+draft/react=🎉 TAGMSG {channel}")
            reacted = await alice.next_message(lambda m: m.find(f"{{{NS_REACTIONS}}}reactions") is not None)
            assert reacted.get("from") == f"{chan}/{bob_nick}" and body(reacted) is None
            element = reacted.find(f"{{{NS_REACTIONS}}}reactions")
            assert element.get("id") == sid
            assert [r.text for r in element.findall(f"{{{NS_REACTIONS}}}reaction")] == ["🎉"]
            # A reaction to a message the gateway never saw (InspIRCd does not echo the user's own lines to
            # the gateway, so their msgids are unknown): said in words, not lost.
            bob.send(f"@+draft/reply=001~0~unknown;+draft/react=👀 TAGMSG {channel}")
            worded = await alice.next_message(lambda m: body(m) == "Reacted 👀")
            assert worded.get("from") == f"{chan}/{bob_nick}"
        finally:
            await alice.stop()
            await bob.close()

    run(scenario(), 120)


def test_irc_without_message_tags_correction_reply_reaction_as_text(prosody, ngircd, irc_gateway):
    """ngircd has no message-tags: replies and reactions are text lines naming the nick and quoting."""

    async def scenario():
        bob, alice, chan, channel, bob_nick, sid, _ = await irc_scenario(prosody, ngircd.port, "plain.test", False)
        try:
            # A reply to a line the gateway does not remember: the client's quote and its 'to' (the nick).
            alice.send_chat(chan, "> old words\nlate answer", mtype="groupchat",
                            extra=reply(f"{chan}/{bob_nick}", "forgotten", "> old words\n"))
            await bob.expect(said(channel, f"{bob_nick}: “old words” late answer"))
            # Typing goes nowhere without client tags: the next line bob sees is the next message.
            alice.send_chat(chan, None, mtype="groupchat", extra=state("composing"))
            alice.send_chat(chan, "typed, then sent", mtype="groupchat")
            line = await bob.expect(lambda l: " PRIVMSG " in l or " TAGMSG " in l)
            assert line.endswith(f"PRIVMSG {channel} :typed, then sent")
        finally:
            await alice.stop()
            await bob.close()

    run(scenario(), 120)


def test_irc_typing_both_ways_on_inspircd(prosody, inspircd, irc_gateway):
    """XEP-0085 composing/paused/active as +typing=active/paused/done TAGMSGs, and back."""
    channel = f"#typing{PID}"
    chan = room(channel, "tags.test")
    user = prosody.register(f"convtype{PID}", "pw")

    async def scenario():
        bob = await CapIRC(inspircd.port, f"tbob{PID}", caps="message-tags").connect()
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            bob.send(f"JOIN {channel}")
            await bob.expect(lambda l: " JOIN " in l and channel in l)
            await join(alice, channel, "typist", "tags.test")
            await bob.expect(lambda l: " JOIN " in l and l.startswith(":typist!"))
            for xep, irc in (("composing", "active"), ("paused", "paused"), ("active", "done")):
                alice.send_chat(chan, None, mtype="groupchat", extra=state(xep))
                line = await bob.expect(lambda l: " TAGMSG " in l)
                assert f"+typing={irc}" in line.split(" ", 1)[0] and line.startswith("@") and ":typist!" in line
            for irc, xep in (("active", "composing"), ("paused", "paused"), ("done", "active")):
                bob.send(f"@+typing={irc} TAGMSG {channel}")
                typing = await alice.next_message(lambda m: m.get("from") == f"{chan}/tbob{PID}")
                assert typing.find(f"{{{NS_CHATSTATES}}}{xep}") is not None and body(typing) is None
            # Privately too: to the occupant's JID, and from bob's.
            bob_jid = f"tbob{PID}%tags.test@{IRC}"
            alice.send_chat(bob_jid, None, extra=state("composing"))
            line = await bob.expect(lambda l: " TAGMSG " in l)
            assert "+typing=active" in line.split(" ", 1)[0] and line.split(" ")[-1].lstrip(":") == f"tbob{PID}"
            bob.send("@+typing=active TAGMSG typist")
            typing = await alice.next_message(lambda m: m.get("from") == bob_jid)
            assert typing.find(f"{{{NS_CHATSTATES}}}composing") is not None and body(typing) is None
            # Contacts say what they carry (XEP-0030), so clients offer corrections, replies and reactions.
            info = await alice.iq(bob_jid, "get", "<query xmlns='http://jabber.org/protocol/disco#info'/>")
            features = {f.get("var") for f in info.iter("{http://jabber.org/protocol/disco#info}feature")}
            assert {NS_CORRECT, NS_REPLY, NS_REACTIONS, NS_CHATSTATES} <= features
        finally:
            await alice.stop()
            await bob.close()

    run(scenario(), 90)


# -- email ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(workdir):
    return self_signed(os.path.join(workdir, "convmail-certs"), ("localhost", "smarthost.test"))


@pytest.fixture(scope="module")
def smarthost(certs):
    host = Smarthost(free_port(), *certs).start()
    yield host
    host.stop()


@pytest.fixture(scope="module")
def mail_gateway(prosody, smarthost, certs, workdir):
    path = os.path.join(workdir, "convmail-gw")
    os.makedirs(path, exist_ok=True)
    smtp_port = free_port()
    cert, key = certs
    gw = start_gateway(prosody, path, "convmail", adapter="email", options={
        "mail_domain": MAIL_DOMAIN, "smarthost_host": "localhost", "smarthost_port": smarthost.controller.port,
        "smarthost_tls": "required", "smarthost_ca": cert, "smarthost_username": SMARTHOST_USER,
        "smarthost_password": SMARTHOST_PASSWORD, "smtp_listen": f"tcp:{smtp_port}:interface=127.0.0.1",
        "tls_cert": cert, "tls_key": key}, outbox={"retry_initial": 0.3, "retry_max": 0.5, "deadline": 30.0})
    gw.smtp_port = smtp_port
    yield gw
    gw.stop()


def parsed(mail: dict) -> email.message.EmailMessage:
    return email.message_from_bytes(mail["data"], policy=email.policy.default)


def text_of_mail(mail: dict) -> str:
    return parsed(mail).get_body(("plain",)).get_content().strip()


async def settings(client: Client, domain: str, fields: dict[str, str]) -> None:
    """The XEP-0050 ``settings`` command of the gateway, submitted with ``fields``."""
    ns = "http://jabber.org/protocol/commands"
    first = await client.iq(domain, "set", f"<command xmlns='{ns}' node='settings' action='execute'/>")
    session = first.find(f"{{{ns}}}command").get("sessionid")
    values = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    await client.iq(domain, "set", f"<command xmlns='{ns}' node='settings' sessionid='{session}' action='complete'>"
                                   f"<x xmlns='jabber:x:data' type='submit'>{values}</x></command>")


def test_email_reply_reaction_and_correction_per_setting(prosody, smarthost, mail_gateway):
    """Replies and reactions thread under the mail answered (In-Reply-To/References); corrections by setting."""
    bob = f"convbob{PID}@example.net"
    bob_jid = f"{bob.replace('@', chr(92) + '40')}@{MAIL}"
    alias = f"convann{PID}"
    question = f"<lunch-{secrets.token_hex(4)}@example.net>"

    def mail_to_bob(predicate):
        found = smarthost.wait(lambda m: bob in m["to"] and predicate(m))
        assert found, "no such mail reached the smarthost"
        return found[-1]

    async def scenario():
        alice = await Client(prosody.register(alias, "pw"), "pw").start(prosody.c2s_port)
        try:
            await alice.iq(MAIL, "set", register_form({"alias": alias, "name": "Ann"}))
            r = await asyncio.to_thread(swaks, mail_gateway.smtp_port, "--tls", "--from", bob,
                                        "--to", f"{alias}@{MAIL_DOMAIN}", "--header", "Subject: lunch",
                                        "--header", f"Message-Id: {question}", "--body", "lunch on friday?")
            assert r.returncode == 0, r.stdout + r.stderr
            heard = await alice.next_message(lambda m: body(m) == "lunch on friday?")
            heard_id = heard.get("id")

            alice.send_chat(bob_jid, None, extra=state("composing"))         # typing: never mailed
            quote = "> lunch on friday?\n"
            alice.send_chat(bob_jid, quote + "yes, at noon", msg_id="noon", extra=reply(bob_jid, heard_id, quote))
            answer = await asyncio.to_thread(mail_to_bob, lambda m: b"yes, at noon" in m["data"])
            head = parsed(answer)
            assert head["In-Reply-To"] == question and question in head["References"]
            assert head["Subject"] == "Re: lunch"
            assert text_of_mail(answer) == "yes, at noon"             # the client's quote is not mailed twice
            answer_id = head["Message-ID"]

            alice.send_chat(bob_jid, None, extra=reactions(heard_id, "❤"))
            love = await asyncio.to_thread(mail_to_bob, lambda m: "Reacted" in text_of_mail(m))
            assert text_of_mail(love) == "Reacted ❤ to “lunch on friday?”"
            assert parsed(love)["In-Reply-To"] == question

            # A correction of the user's own mail: a correction mail in its thread (the default)...
            alice.send_chat(bob_jid, "yes, at one", msg_id="one", extra=replace("noon"))
            fixed = await asyncio.to_thread(mail_to_bob, lambda m: "Correction:" in text_of_mail(m))
            assert text_of_mail(fixed) == "Correction: yes, at one"
            assert parsed(fixed)["In-Reply-To"] == answer_id
            # ...or nothing, when the user says so.
            await settings(alice, MAIL, {"corrections": "ignore"})
            alice.send_chat(bob_jid, "yes, at two", extra=replace("noon"))
            alice.send_chat(bob_jid, "see you then", msg_id="then")
            await asyncio.to_thread(mail_to_bob, lambda m: b"see you then" in m["data"])
            assert not [m for m in smarthost.received if b"at two" in m["data"]]
            assert [text_of_mail(m) for m in smarthost.received if bob in m["to"]] == [
                "yes, at noon", "Reacted ❤ to “lunch on friday?”", "Correction: yes, at one", "see you then"]

            # bob answers the user's mail: a reply (XEP-0461) to the user's message.
            r = await asyncio.to_thread(swaks, mail_gateway.smtp_port, "--tls", "--from", bob,
                                        "--to", f"{alias}@{MAIL_DOMAIN}", "--header", "Subject: Re: lunch",
                                        "--header", f"In-Reply-To: {answer_id}", "--body", "great, noon it is")
            assert r.returncode == 0, r.stdout + r.stderr
            answered = await alice.next_message(lambda m: body(m) == "great, noon it is")
            link = answered.find(f"{{{NS_REPLY}}}reply")
            assert link is not None and link.get("id") == "noon"

            # Correcting bob's mail is refused.
            alice.send_chat(bob_jid, "dinner instead", msg_id="notmine", extra=replace(heard_id))
            refused = await alice.next_message(lambda m: m.get("type") == "error" and m.get("id") == "notmine")
            assert error_condition(refused)[0] == "forbidden"
        finally:
            await alice.stop()

    run(scenario(), 90)


# -- SMS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulator(workdir):
    path = os.path.join(workdir, "convsms-sim")
    os.makedirs(path, exist_ok=True)
    sim = TwilioSimulator(path).start()
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def sms_gateway(prosody, simulator, workdir):
    path = os.path.join(workdir, "convsms-gw")
    os.makedirs(path, exist_ok=True)
    web_port = free_port()
    gw = start_gateway(prosody, path, "convsms", adapter="sms", web_port=web_port,
                       options=sms_options(simulator, web_port, allowed_countries=["US"]),
                       outbox={"retry_initial": 0.3, "retry_max": 0.5, "deadline": 30.0})
    gw.hooks = f"http://127.0.0.1:{web_port}/hooks/{SMS}/twilio"
    yield gw
    gw.stop()


def test_sms_reply_reaction_and_correction_as_text(prosody, simulator, sms_gateway):
    """SMS has none of these: a quoted first line, "Reacted … to “…”", "Correction: …" (or nothing)."""
    number, contact = f"+1415556{PID % 1000:03d}1", f"+1202556{PID % 1000:03d}2"
    contact_jid = f"{contact}@{SMS}"

    async def wait_sent(text: str) -> None:
        for _ in range(300):
            if any(m["body"] == text and m["to"] == contact
                   for m in await asyncio.to_thread(simulator.messages)):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{text!r} never reached the simulator")

    async def scenario():
        alice = await registered_client(prosody, SMS, "convsms", Client, {"number": number})
        try:
            answer = await asyncio.to_thread(simulator.control, "inbound", {
                "url": f"{sms_gateway.hooks}/inbound", "from": contact, "to": number, "body": "are you coming?"})
            assert answer["status"] == 200
            heard = await alice.next_message(lambda m: body(m) == "are you coming?")
            heard_id = heard.get("id")

            alice.send_chat(contact_jid, None, extra=state("composing"))     # typing: never an SMS
            quote = f"> {contact} wrote:\n> are you coming?\n"       # the client's own fallback, not sent
            alice.send_chat(contact_jid, quote + "on my way", extra=reply(contact_jid, heard_id, quote))
            await wait_sent("> are you coming?\non my way")
            alice.send_chat(contact_jid, None, extra=reactions(heard_id, "👍"))
            await wait_sent("Reacted 👍 to “are you coming?”")

            alice.send_chat(contact_jid, "see you at 8", msg_id="eight")
            await wait_sent("see you at 8")
            alice.send_chat(contact_jid, "see you at 9", extra=replace("eight"))
            await wait_sent("Correction: see you at 9")
            await settings(alice, SMS, {"corrections": "ignore"})
            alice.send_chat(contact_jid, "see you at 10", extra=replace("eight"))
            alice.send_chat(contact_jid, "bring snacks")
            await wait_sent("bring snacks")
            assert [m["body"] for m in await asyncio.to_thread(simulator.messages) if m["to"] == contact] == [
                "> are you coming?\non my way", "Reacted 👍 to “are you coming?”", "see you at 8",
                "Correction: see you at 9", "bring snacks"]

            alice.send_chat(contact_jid, "i am not coming", msg_id="notmine", extra=replace(heard_id))
            refused = await alice.next_message(lambda m: m.get("type") == "error" and m.get("id") == "notmine")
            assert error_condition(refused)[0] == "forbidden"
        finally:
            await alice.stop()

    run(scenario(), 90)
