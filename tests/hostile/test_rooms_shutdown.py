"""
Rooms at shutdown (XEP-0045 §9.? status 332): when the gateway stops, every
occupant of every room it hosts is told it was removed because the service is
shutting down, so clients do not keep ghost rooms they think they are in.
Real parts: Prosody, ngircd, slixmpp, the gateway as a process (SIGTERM).
"""

from __future__ import annotations

import os

from gateway.testing.ngircd import Ngircd
from tests.hostile.conftest import start_gateway
from tests.integration.harness import Client, run
from tests.integration.irc_support import RawIRC

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"


def statuses(p) -> set[int]:
    return {int(s.get("code")) for s in p.findall(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}status")}


def test_every_occupant_hears_332_when_the_gateway_stops(hostile_prosody, workdir, fresh_dir):
    ircd = Ngircd(os.path.join(workdir, "ngircd-shutdown")).start()
    gateway = start_gateway(hostile_prosody, fresh_dir, "hmuc", adapter="irc", options={
        "servers": {"localhost": {"host": "127.0.0.1", "port": ircd.port, "tls": False}}, "throttle_rate": 0.0})
    user = hostile_prosody.register(f"hmuc{os.getpid()}", "pw")
    domain = gateway.domain
    rooms = [f"#one%localhost@{domain}", f"#two%localhost@{domain}"]

    async def scenario():
        other = await RawIRC(ircd.port, "watcher").connect()
        other.send("JOIN #one", "JOIN #two")
        # Two resources of one user, one in both rooms, one in the first only.
        a = await Client(f"{user}/a", "pw").start(hostile_prosody.c2s_port)
        b = await Client(f"{user}/b", "pw").start(hostile_prosody.c2s_port)
        try:
            joined = [(a, rooms[0], "shut"), (a, rooms[1], "shut"), (b, rooms[0], "shut")]
            for client, room, nick in joined:
                client.send_raw(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'/></presence>")
                await client.next_presence(lambda p, room=room: p.get("from", "").startswith(room + "/")
                                           and 110 in statuses(p) and p.get("type") is None, timeout=30)
            stopped = gateway.proc
            stopped.terminate()                                     # SIGTERM: an orderly stop
            for client, room, nick in joined:
                p = await client.next_presence(lambda p, room=room: p.get("from", "").startswith(room + "/")
                                               and p.get("type") == "unavailable", timeout=30)
                assert p.get("from") == f"{room}/{nick}"
                assert {110, 332} <= statuses(p), statuses(p)
                item = p.find(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}item")
                assert item.get("role") == "none" and item.get("affiliation") == "none"
        finally:
            await a.stop()
            await b.stop()
            await other.close()

    try:
        run(scenario(), timeout=120)
        assert gateway.proc.wait(timeout=30) == 0
    finally:
        gateway.stop()
        ircd.stop()
