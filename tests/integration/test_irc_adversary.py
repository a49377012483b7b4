"""
What the adversary review found on the IRC side, end to end: a real ngircd with
a raw IRC client, a real Prosody with a slixmpp user, the gateway process.
"""

import os

import pytest

from tests.integration.harness import Client, run
from tests.integration.irc_support import RawIRC, irc_server_fixture, start_irc_gateway

DOMAIN = "ircadv.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"


ircd = irc_server_fixture("ngircd", "ircadv")


@pytest.fixture(scope="module")
def gateway(prosody, ircd, workdir):
    gw = start_irc_gateway(prosody, workdir, "ircadv", localhost=ircd)
    yield gw
    gw.stop()


def test_a_line_a_moderated_channel_refuses_is_told_in_the_room(prosody, ircd, gateway):
    """ngircd answers 404 to a line in a +m channel from someone without voice: the room says so."""
    user = prosody.register(f"advhush{os.getpid()}", "pw")
    jid = f"#hush%localhost@{DOMAIN}"

    async def scenario():
        owner = await RawIRC(ircd.port, "hushowner").connect()
        owner.send("JOIN #hush")
        await owner.expect(lambda l: " 366 " in l, timeout=30)
        owner.send("MODE #hush +m")
        await owner.expect(lambda l: "MODE #hush +m" in l, timeout=30)
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            alice.send_raw(f"<presence to='{jid}/hushpeon'><x xmlns='{NS_MUC}'/></presence>")
            await alice.next_presence(lambda p: p.get("from") == f"{jid}/hushpeon" and any(
                s.get("code") == "110" for s in p.iter(f"{{{NS_MUC_USER}}}status")), timeout=30)
            alice.send_raw(f"<message to='{jid}' type='groupchat' id='h1'><body>hello</body></message>")
            told = await alice.next_message(
                lambda m: m.get("from") == jid and "did not pass your message on"
                in (m.findtext("{jabber:client}body") or ""), timeout=30)
            assert "#hush" in told.findtext("{jabber:client}body")
            assert not [line for line in owner.seen if "PRIVMSG #hush :hello" in line]
        finally:
            await alice.stop()
            await owner.close()

    run(scenario(), 90)


def test_a_private_message_to_a_nick_not_there_is_told(prosody, ircd, gateway):
    """ngircd answers 401 to a PRIVMSG to a nick nobody has: the user hears it from that nick's JID."""
    user = prosody.register(f"advghost{os.getpid()}", "pw")
    ghost = f"nobodyhere%localhost@{DOMAIN}"

    async def scenario():
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            alice.send_raw(f"<message to='{ghost}' type='chat' id='g1'><body>anyone?</body></message>")
            told = await alice.next_message(lambda m: m.get("from", "").startswith(ghost) and "not delivered"
                                            in (m.findtext("{jabber:client}body") or ""), timeout=60)
            assert told is not None
        finally:
            await alice.stop()

    run(scenario(), 90)
