"""
Occupants' real JIDs, moderation from XMPP (muc#admin kick, voice, op, ban),
invitations both ways and mode changes (issue 13), end to end: a real ngircd
with raw IRC clients, a real Prosody with slixmpp users, the gateway process
between them. InspIRCd shows the userhost-in-names path (no WHO needed).
"""

import os

import pytest

from tests.integration.harness import Client, run
from tests.integration.irc_support import RawIRC, irc_server_fixture, start_irc_gateway

DOMAIN = "ircmod.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_ADMIN = "http://jabber.org/protocol/muc#admin"


ircd = irc_server_fixture("ngircd", "ircmod")


inspircd = irc_server_fixture("inspircd", "ircmod")


@pytest.fixture(scope="module")
def gateway(prosody, ircd, inspircd, workdir):
    gw = start_irc_gateway(prosody, workdir, "ircmod", **{"localhost": ircd, "insp.test": inspircd})
    yield gw
    gw.stop()


def room(channel: str, server: str = "localhost") -> str:
    return f"{channel}%{server}@{DOMAIN}"


def codes(p) -> set[int]:
    return {int(s.get("code")) for s in p.findall(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}status")}


def item(p):
    return p.find(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}item")


async def join(client: Client, channel: str, nick: str, server: str = "localhost"):
    jid = room(channel, server)
    client.send_raw(f"<presence to='{jid}/{nick}'><x xmlns='{NS_MUC}'/></presence>")
    return await client.next_presence(lambda p: p.get("from") == f"{jid}/{nick}" and 110 in codes(p), timeout=30)


def admin(nick: str, **attrs) -> str:
    reason = attrs.pop("reason", None)
    extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
    inner = f"<reason>{reason}</reason>" if reason else ""
    return f"<query xmlns='{NS_ADMIN}'><item nick='{nick}'{extra}>{inner}</item></query>"


def test_occupants_carry_their_real_jid(prosody, ircd, gateway):
    """The private-message JID of each occupant, with user@host from WHO (ngircd has no userhost-in-names)."""
    user = prosody.register(f"realjid{os.getpid()}", "pw")

    async def scenario():
        bob = await RawIRC(ircd.port, "jidbob").connect()
        bob.send("JOIN #jids")
        await bob.expect(lambda l: " 366 " in l, timeout=30)
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            own = await join(alice, "#jids", "jidalice")
            assert 100 in codes(own)
            assert item(own).get("jid", "").startswith(f"{user}/")
            shown = await alice.next_presence(lambda p: p.get("from") == f"{room('#jids')}/jidbob"
                                              and "/" in (item(p).get("jid") or ""), timeout=30)
            assert item(shown).get("jid") == f"jidbob%localhost@{DOMAIN}/~jidbob@127.0.0.1"
            # A newcomer's host comes with its JOIN.
            carol = await RawIRC(ircd.port, "jidcarol").connect()
            carol.send("JOIN #jids")
            came = await alice.next_presence(lambda p: p.get("from") == f"{room('#jids')}/jidcarol", timeout=30)
            assert item(came).get("jid") == f"jidcarol%localhost@{DOMAIN}/~jidcarol@127.0.0.1"
            # The bare part is where private messages go.
            alice.send_chat(f"jidcarol%localhost@{DOMAIN}", "psst")
            await carol.expect(lambda l: l.endswith("PRIVMSG jidcarol :psst"), timeout=30)
            await carol.close()
        finally:
            await alice.stop()
            await bob.close()

    run(scenario(), 90)


def test_userhost_in_names_gives_real_jids_without_who(prosody, inspircd, gateway):
    """
    InspIRCd offers userhost-in-names: NAMES carries every occupant's user and
    host, so their presences have it before the user's own (a WHO's answers
    would only come after the join).
    """
    user = prosody.register(f"uhnames{os.getpid()}", "pw")

    async def scenario():
        dora = await RawIRC(inspircd.port, "uhdora").connect()
        dora.send("JOIN #uh")
        await dora.expect(lambda l: " 366 " in l, timeout=30)
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            presences = []
            jid = room("#uh", "insp.test")
            alice.send_raw(f"<presence to='{jid}/uhalice'><x xmlns='{NS_MUC}'/></presence>")
            while True:
                p = await alice.next_presence(lambda p: p.get("from", "").startswith(jid + "/"), timeout=30)
                presences.append(p)
                if 110 in codes(p):
                    break
            dora_seen = [p for p in presences if p.get("from") == f"{jid}/uhdora"]
            assert dora_seen and item(dora_seen[0]).get("jid", "").startswith(
                f"uhdora%insp.test@{DOMAIN}/"), [item(p).attrib for p in presences]
            assert "@" in item(dora_seen[0]).get("jid").partition("/")[2]
        finally:
            await alice.stop()
            await dora.close()

    run(scenario(), 120)


def test_kick_voice_op_and_ban_from_xmpp_are_done_on_irc_and_answered(prosody, ircd, gateway):
    """The user made the channel (so is its operator); each muc#admin change is seen on IRC and answered."""
    user = prosody.register(f"modop{os.getpid()}", "pw")

    async def scenario():
        alice = await Client(user, "pw").start(prosody.c2s_port)
        bob = await RawIRC(ircd.port, "modbob").connect()
        try:
            own = await join(alice, "#modded", "modalice")
            assert item(own).get("role") == "moderator"
            bob.send("JOIN #modded")
            await alice.next_presence(lambda p: p.get("from") == f"{room('#modded')}/modbob", timeout=30)

            reply = await alice.iq(room("#modded"), "set", admin("modbob", role="participant"))
            assert reply.get("type") == "result"
            await bob.expect(lambda l: l.startswith(":modalice!") and l.endswith("MODE #modded +v modbob"), timeout=30)
            voiced = await alice.next_presence(lambda p: p.get("from") == f"{room('#modded')}/modbob"
                                               and item(p).get("affiliation") == "member", timeout=30)
            assert item(voiced).get("role") == "participant"

            reply = await alice.iq(room("#modded"), "set", admin("modbob", role="moderator"))
            assert reply.get("type") == "result"
            await bob.expect(lambda l: l.endswith("MODE #modded +o modbob"), timeout=30)
            op = await alice.next_presence(lambda p: p.get("from") == f"{room('#modded')}/modbob"
                                           and item(p).get("role") == "moderator", timeout=30)
            assert item(op).get("affiliation") == "admin"
            # The mode change is told by the room itself, not as a line from a nick.
            notice = await alice.next_message(lambda m: m.get("from") == room("#modded")
                                              and "+o modbob" in (m.findtext("{jabber:client}body") or ""), timeout=30)
            assert notice.findtext("{jabber:client}body") == "Mode #modded [+o modbob] by modalice"

            reply = await alice.iq(room("#modded"), "set", admin("modbob", role="visitor"))
            assert reply.get("type") == "result"
            await bob.expect(lambda l: "MODE #modded -ov modbob modbob" in l, timeout=30)

            reply = await alice.iq(room("#modded"), "set", admin("modbob", role="none", reason="enough"))
            assert reply.get("type") == "result"
            await bob.expect(lambda l: l.startswith(":modalice!") and "KICK #modded modbob :enough" in l, timeout=30)
            gone = await alice.next_presence(lambda p: p.get("from") == f"{room('#modded')}/modbob"
                                             and p.get("type") == "unavailable", timeout=30)
            assert 307 in codes(gone)
            assert item(gone).find(f"{{{NS_MUC_USER}}}actor").get("nick") == "modalice"
            assert "enough" in item(gone).findtext(f"{{{NS_MUC_USER}}}reason")

            bob.send("JOIN #modded")
            await alice.next_presence(lambda p: p.get("from") == f"{room('#modded')}/modbob"
                                      and p.get("type") is None, timeout=30)
            ban = (f"<query xmlns='{NS_ADMIN}'><item affiliation='outcast' jid='modbob%localhost@{DOMAIN}'>"
                   "<reason>banned</reason></item></query>")
            reply = await alice.iq(room("#modded"), "set", ban)
            assert reply.get("type") == "result"
            await bob.expect(lambda l: l.endswith("MODE #modded +b modbob!*@*"), timeout=30)
            await bob.expect(lambda l: "KICK #modded modbob :banned" in l, timeout=30)
            bob.send("JOIN #modded")
            await bob.expect(lambda l: " 474 " in l, timeout=30)          # ERR_BANNEDFROMCHAN
            reply = await alice.iq(room("#modded"), "set",
                                   f"<query xmlns='{NS_ADMIN}'><item affiliation='none' nick='modbob'/></query>")
            assert reply.get("type") == "result"
            bob.send("JOIN #modded")                       # the ban is lifted: bob is let in
            await bob.expect(lambda l: l.startswith(":modbob!") and " JOIN " in l and "#modded" in l, timeout=30)

            # Nobody by that name: item-not-found; a list: not implemented.
            condition, _ = await alice.iq_error(room("#modded"), "set", admin("nosuchnick", role="moderator"))
            assert condition == "item-not-found"
            condition, _ = await alice.iq_error(room("#modded"), "get",
                                                f"<query xmlns='{NS_ADMIN}'><item affiliation='outcast'/></query>")
            assert condition == "feature-not-implemented"
        finally:
            await alice.stop()
            await bob.close()

    run(scenario(), 150)


def test_a_kick_refused_when_not_operator_is_forbidden(prosody, ircd, gateway):
    """482 ERR_CHANOPRIVSNEEDED becomes <forbidden/> with the server's words; nobody is kicked."""
    user = prosody.register(f"modno{os.getpid()}", "pw")

    async def scenario():
        owner = await RawIRC(ircd.port, "modowner").connect()
        owner.send("JOIN #notmine")
        await owner.expect(lambda l: " 366 " in l, timeout=30)
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            own = await join(alice, "#notmine", "modpeon")
            assert item(own).get("role") == "participant"
            condition, text = await alice.iq_error(room("#notmine"), "set", admin("modowner", role="none"))
            assert condition == "forbidden"
            assert text and text.startswith("localhost: ")
            owner.send("PRIVMSG #notmine :still here")
            got = await alice.next_message(lambda m: m.findtext("{jabber:client}body") == "still here", timeout=30)
            assert got.get("from") == f"{room('#notmine')}/modowner"
            assert not [line for line in owner.seen if " KICK " in line]
        finally:
            await alice.stop()
            await owner.close()

    run(scenario(), 90)


def test_irc_side_kick_mode_and_invite_are_seen_on_xmpp(prosody, ircd, gateway):
    """An operator on IRC voices and kicks the user and invites them elsewhere: presences, notice, invitation."""
    user = prosody.register(f"modirc{os.getpid()}", "pw")

    async def scenario():
        op = await RawIRC(ircd.port, "modchief").connect()
        op.send("JOIN #ruled", "JOIN #other")
        await op.collect(lambda l: " 366 " in l, 2)
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            await join(alice, "#ruled", "modvic")
            op.send("MODE #ruled +v modvic")
            notice = await alice.next_message(lambda m: m.get("from") == room("#ruled")
                                              and "+v" in (m.findtext("{jabber:client}body") or ""), timeout=30)
            assert notice.get("type") == "groupchat"
            assert notice.findtext("{jabber:client}body") == "Mode #ruled [+v modvic] by modchief"
            mine = await alice.next_presence(lambda p: p.get("from") == f"{room('#ruled')}/modvic"
                                             and item(p).get("affiliation") == "member", timeout=30)
            assert 110 in codes(mine)

            op.send("INVITE modvic #other")
            invitation = await alice.next_message(
                lambda m: m.find(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}invite") is not None, timeout=30)
            assert invitation.get("from") == room("#other")
            invite = invitation.find(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}invite")
            assert invite.get("from") == f"modchief%localhost@{DOMAIN}"

            op.send("KICK #ruled modvic :out")
            kicked = await alice.next_presence(lambda p: p.get("from") == f"{room('#ruled')}/modvic"
                                               and p.get("type") == "unavailable", timeout=30)
            assert {307, 110} <= codes(kicked)
            assert item(kicked).find(f"{{{NS_MUC_USER}}}actor").get("nick") == "modchief"
        finally:
            await alice.stop()
            await op.close()

    run(scenario(), 90)


def test_invite_from_xmpp_reaches_the_irc_nick(prosody, ircd, gateway):
    """
    A mediated invitation to an IRC user's JID becomes INVITE; to nobody, an
    item-not-found error; to a JID elsewhere, the room passes it on.
    """
    user = prosody.register(f"modinv{os.getpid()}", "pw")
    friend = prosody.register(f"modfriend{os.getpid()}", "pw")

    async def scenario():
        alice = await Client(user, "pw").start(prosody.c2s_port)
        carl = await Client(friend, "pw").start(prosody.c2s_port)
        dan = await RawIRC(ircd.port, "moddan").connect()
        try:
            await join(alice, "#invited", "modhost")
            alice.send_raw(f"<message xmlns='jabber:client' to='{room('#invited')}' id='inv1'>"
                           f"<x xmlns='{NS_MUC_USER}'><invite to='moddan%localhost@{DOMAIN}'>"
                           "<reason>come</reason></invite></x></message>")
            await dan.expect(lambda l: l.startswith(":modhost!") and " INVITE moddan " in l and "#invited" in l,
                             timeout=30)
            alice.send_raw(f"<message xmlns='jabber:client' to='{room('#invited')}' id='inv2'>"
                           f"<x xmlns='{NS_MUC_USER}'><invite to='nobodyhere%localhost@{DOMAIN}'/></x></message>")
            error = await alice.next_message(lambda m: m.get("id") == "inv2" and m.get("type") == "error",
                                             timeout=30)
            cond = error.find("{jabber:client}error")
            assert cond.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None

            alice.send_raw(f"<message xmlns='jabber:client' to='{room('#invited')}' id='inv3'>"
                           f"<x xmlns='{NS_MUC_USER}'><invite to='{friend}'><reason>see you</reason></invite></x>"
                           "</message>")
            passed = await carl.next_message(lambda m: m.get("from") == room("#invited"), timeout=30)
            invite = passed.find(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}invite")
            assert invite.get("from") == user and invite.findtext(f"{{{NS_MUC_USER}}}reason") == "see you"
        finally:
            await alice.stop()
            await carl.stop()
            await dan.close()

    run(scenario(), 90)
