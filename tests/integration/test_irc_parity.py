"""
IRC features biboumi users rely on (issue 13), end to end: a real ngircd with a raw
IRC client, a real Prosody with slixmpp users, the gateway process between them.
"""

import os

import pytest

from gateway.testing.ngircd import Ngircd
from tests.integration.gateway_fixture import start_gateway
from tests.integration.harness import Client, run
from tests.integration.irc_support import RawIRC

DOMAIN = "parity.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
PING = "<ping xmlns='urn:xmpp:ping'/>"


@pytest.fixture(scope="module")
def ircd(workdir):
    server = Ngircd(os.path.join(workdir, "ngircd-parity")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(prosody, ircd, workdir):
    path = os.path.join(workdir, "parity-gw")
    os.makedirs(path, exist_ok=True)
    gw = start_gateway(prosody, path, "parity", adapter="irc", options={
        "servers": {"localhost": {"host": "127.0.0.1", "port": ircd.port, "tls": False}},
        "throttle_rate": 0.0, "allowed_servers": ["localhost"]})
    yield gw
    gw.stop()


def room(channel: str) -> str:
    return f"{channel}%localhost@{DOMAIN}"


def codes(p) -> set[int]:
    return {int(s.get("code")) for s in p.findall(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}status")}


async def join(client: Client, channel: str, nick: str):
    client.send_raw(f"<presence to='{room(channel)}/{nick}'><x xmlns='{NS_MUC}'/></presence>")
    return await client.next_presence(lambda p: p.get("from") == f"{room(channel)}/{nick}" and 110 in codes(p),
                                      timeout=30)


def test_self_ping_joined_not_joined_and_after_a_gateway_restart(prosody, ircd, gateway):
    """XEP-0410: a client pings its own occupant JID to learn whether it is still in the room."""
    user = prosody.register(f"pinger{os.getpid()}", "pw")

    async def before_restart():
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            await join(alice, "#pings", "pinger")
            assert (await alice.iq(f"{room('#pings')}/pinger", "get", PING)).get("type") == "result"
            # Another occupant of a room the user is in: the room answers for it.
            bob = await RawIRC(ircd.port, "pingbob").connect()
            bob.send("JOIN #pings")
            await alice.next_presence(lambda p: p.get("from") == f"{room('#pings')}/pingbob", timeout=30)
            assert (await alice.iq(f"{room('#pings')}/pingbob", "get", PING)).get("type") == "result"
            condition, _ = await alice.iq_error(f"{room('#elsewhere')}/pinger", "get", PING)
            assert condition == "not-acceptable"
            # The room's own JID and the component stay pingable.
            assert (await alice.iq(room("#pings"), "get", PING)).get("type") == "result"
            assert (await alice.iq(DOMAIN, "get", PING)).get("type") == "result"
        finally:
            await alice.stop()

    run(before_restart(), 90)
    gateway.stop()
    gateway.start()

    async def after_restart():
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            # The restart took the IRC connection: the client must hear it is out, and rejoin.
            condition, _ = await alice.iq_error(f"{room('#pings')}/pinger", "get", PING)
            assert condition == "not-acceptable"
            await join(alice, "#pings", "pinger")
            assert (await alice.iq(f"{room('#pings')}/pinger", "get", PING)).get("type") == "result"
        finally:
            await alice.stop()

    run(after_restart(), 90)
