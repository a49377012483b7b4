"""
The idle policy, end to end: real gateway process, Prosody, slixmpp and ngircd,
with ``persistent = true`` and ``idle_timeout`` of 3 s. A user whose client goes
offline keeps the connection (persistent) only until the idle timeout: then the
gateway's nick quits the network. A user still online is not reaped.

A raw IRC client watches with WHOIS (after the PART of a persistent leave it
shares no channel with the gateway's nick, so a QUIT would not reach it); every
wait is on a condition with a generous bound. The one fixed wait is the negative
check (the online user is still there after twice the timeout): absence can
only be shown by waiting.
"""

import asyncio
import os
import time

from gateway.testing.ngircd import Ngircd
from tests.integration.gateway_fixture import start_gateway
from tests.integration.harness import Client, run
from tests.integration.irc_support import RawIRC

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
DOMAIN = "ircidle.localhost"
IDLE = 3.0


def statuses(p) -> set[int]:
    return {int(s.get("code")) for s in p.findall(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}status")}


async def on_network(watcher: RawIRC, nick: str) -> bool:
    watcher.send(f"WHOIS {nick}")
    reply = await watcher.expect(lambda l: (" 401 " in l or " 311 " in l) and f" {nick} " in l)
    return " 311 " in reply


def test_idle_timeout_disconnects_a_persistent_user_gone_offline_not_one_online(prosody, workdir, fresh_dir):
    ircd = Ngircd(os.path.join(workdir, "ngircd-idle")).start()
    gateway = start_gateway(prosody, fresh_dir, "ircidle", adapter="irc", options={
        "servers": {"localhost": {"host": "127.0.0.1", "port": ircd.port, "tls": False}},
        "persistent": True, "idle_timeout": IDLE, "throttle_rate": 0.0})
    gone_user = prosody.register(f"idlegone{os.getpid()}", "pw")
    here_user = prosody.register(f"idlehere{os.getpid()}", "pw")
    room = f"#idle%localhost@{DOMAIN}"

    async def scenario():
        watcher = await RawIRC(ircd.port, "idlewatch").connect()
        watcher.send("JOIN #idle")
        gone = await Client(gone_user, "pw").start(prosody.c2s_port)
        here = await Client(here_user, "pw").start(prosody.c2s_port)
        try:
            for client, nick in ((gone, "idlegone"), (here, "idlehere")):
                client.send_raw(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'/></presence>")
                await client.next_presence(lambda p: p.get("from") == f"{room}/{nick}" and 110 in statuses(p),
                                           timeout=30)
                await watcher.expect(lambda l: l.startswith(f":{nick}!") and " JOIN " in l, timeout=30)
            await gone.stop()                       # offline: its server sends the room unavailable presence
            await watcher.expect(lambda l: l.startswith(":idlegone!") and " PART #idle" in l, timeout=30)
            left = time.monotonic()
            assert await on_network(watcher, "idlegone")      # persistent: still connected after the PART
            while await on_network(watcher, "idlegone"):
                assert time.monotonic() - left < IDLE + 30, "the idle connection was never closed"
                await asyncio.sleep(0.25)
            assert time.monotonic() - left >= IDLE - 0.5      # not before the timeout
            await asyncio.sleep(IDLE * 2)
            assert await on_network(watcher, "idlehere")      # online all along: not reaped
            watcher.send("PRIVMSG #idle :still there?")
            await here.next_message(lambda m: m.find("{jabber:client}body") is not None
                                    and m.find("{jabber:client}body").text == "still there?", timeout=10)
        finally:
            await here.stop()
            await watcher.close()

    try:
        run(scenario(), timeout=90)
    finally:
        gateway.stop()
        ircd.stop()
    assert "no XMPP client in a room on localhost for 3 s: disconnecting" in gateway.log()
