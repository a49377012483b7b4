"""
A big IRC channel (issue 12, big channels), end to end: 60 gateway users
(one load component's, cheap) and raw IRC clients in one ngircd channel, the
real gateway process and Prosody. The N² occupant presences of the joins and
an operator's mass mode changes go out paced (``room_pacing_bytes``) and
merged where XEP-0045 allows (IRC users who come and go while presences
wait cost each user about one presence, not ten): every user's final view of the room (the last
presence of each occupant) is the channel's real member list with its modes,
no line said in the channel is lost or out of order, the component stream
never dropped, and what reached the users' server never went much faster than
the budget.

Every wait is on a condition with a generous bound, never a fixed sleep.
"""

import asyncio
import os
import time

from gateway.testing.ngircd import Ngircd
from tests.integration.conftest import COMPONENTS
from tests.integration.gateway_fixture import start_gateway
from tests.integration.harness import run
from tests.integration.irc_support import LoadComponent, RawIRC

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_CLIENT = "{jabber:component:accept}"
USERS = 60
LINES = 20
CHURNS = 5
#: Bytes per second the gateway may write as room output; what reaches the load component (Prosody
#: writes the stanzas again, a little longer or shorter) is checked against it, with room for bursts.
BUDGET = 300_000
WINDOW = 2.0


class TimedLoad(LoadComponent):
    """The load component, noting when each chunk of bytes arrived (the rate the gateway wrote at)."""

    async def start(self):
        self.chunks: list[tuple[float, int]] = []
        return await super().start()

    def on_data(self, data: bytes) -> None:
        self.chunks.append((time.monotonic(), len(data)))

    def most_in_window(self, since: float, window: float) -> int:
        chunks = [(t, n) for t, n in self.chunks if t >= since]
        best, total, start = 0, 0, 0
        for t, n in chunks:
            total += n
            while chunks[start][0] < t - window:
                total -= chunks[start][1]
                start += 1
            best = max(best, total)
        return best


def role_of(p) -> str | None:
    item = p.find(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}item")
    return item.get("role") if item is not None else None


def test_a_big_channel_gets_every_presence_and_line_paced(prosody, workdir, fresh_dir):
    ircd = Ngircd(os.path.join(workdir, "ngircd-big")).start()
    gateway = start_gateway(prosody, fresh_dir, "ircbig", adapter="irc", options={
        "servers": {"localhost": {"host": "127.0.0.1", "port": ircd.port, "tls": False}},
        "connect_rate": 50.0, "connect_concurrency": 8, "throttle_rate": 0.0},
        xmpp={"room_pacing_bytes": BUDGET}, allowed_domains=("localhost", "bigload.localhost"))
    room = "#big%localhost@ircbig.localhost"
    nicks = [f"big{i}" for i in range(USERS)]

    async def scenario():
        load = await TimedLoad(prosody.component_port, "bigload.localhost", COMPONENTS["bigload.localhost"]).start()
        op = talker = None
        churners = []
        try:
            op = await RawIRC(ircd.port, "bigop").connect()
            op.send("JOIN #big")
            await op.expect(lambda l: " 366 " in l)
            talker = await RawIRC(ircd.port, "talker").connect()
            talker.send("JOIN #big")
            await talker.expect(lambda l: " 366 " in l)
            churners = [await RawIRC(ircd.port, f"churn{n}").connect() for n in range(2)]
            started = time.monotonic()
            for i, nick in enumerate(nicks):
                load.send(f"<presence from='u{i}@bigload.localhost/r' to='{room}/{nick}'><x xmlns='{NS_MUC}'/>"
                          "</presence>")

            def joined_irc() -> set[str]:
                return {l[1:].split("!", 1)[0] for l in op.seen if " JOIN " in l} & set(nicks)

            for _ in range(600):
                if len(joined_irc()) >= USERS:
                    break
                await asyncio.sleep(0.1)
            assert len(joined_irc()) == USERS, USERS - len(joined_irc())
            # Two IRC users come and go five times while the joins' presences wait: to every user, each
            # one's pending presences merge into the latest (they end outside the channel).
            for churner in churners:
                churner.send(*[line for _ in range(CHURNS) for line in ("JOIN #big", "PART #big")])
            for _ in range(600):
                if sum(1 for l in op.seen if " PART #big" in l and l.startswith(":churn")) >= 2 * CHURNS:
                    break
                await asyncio.sleep(0.1)
            # The operator ops everyone, then takes it back from every other one: presences to every user
            # about every member while the joins' presences still wait (mergeable: the latest counts).
            for k in range(0, USERS, 3):
                op.send(f"MODE #big +ooo {' '.join(nicks[k:k + 3])}")
            for k in range(0, USERS, 6):
                op.send(f"MODE #big -ooo {' '.join(nicks[k:k + 6:2])}")
            for n in range(LINES):
                talker.send(f"PRIVMSG #big :line {n}")
            op.send("NAMES #big")
            names_line = await op.expect(lambda l: " 353 " in l and "#big" in l, timeout=30)
            await op.expect(lambda l: " 366 " in l and l in op.seen[op.seen.index(names_line):], timeout=30)
            members = {}
            for line in op.seen[op.seen.index(names_line):]:
                if " 366 " in line:
                    break
                if " 353 " in line:
                    for name in line.split(" :", 1)[1].split():
                        members[name.lstrip("@+")] = "moderator" if name.startswith("@") else "participant"
            assert len(members) == USERS + 2, set(nicks + ["bigop", "talker"]) ^ set(members)
            assert sum(1 for r in members.values() if r == "moderator") == 1 + USERS // 2

            users = [f"u{i}@bigload.localhost/r" for i in range(USERS)]

            def views() -> dict:
                seen = {u: {} for u in users}
                for s in load.stanzas:
                    if s.tag == f"{NS_CLIENT}presence" and s.get("from", "").startswith(room + "/") \
                            and s.get("to") in seen:
                        seen[s.get("to")][s.get("from").split("/", 1)[1]] = s
                return {u: {n: role_of(p) for n, p in v.items() if p.get("type") is None} for u, v in seen.items()}

            def lines() -> dict:
                got = {u: [] for u in users}
                for s in load.stanzas:
                    if s.tag == f"{NS_CLIENT}message" and s.get("type") == "groupchat" \
                            and s.get("from") == f"{room}/talker" and s.get("to") in got:
                        got[s.get("to")].append(s.findtext(f"{NS_CLIENT}body"))
                return got

            def done() -> bool:
                return all(len(v) >= LINES for v in lines().values()) and all(v == members for v in views().values())

            try:
                await load.wait(done, 90, "every user's view and lines")
            except AssertionError:
                wrong = {u: set(v.items()) ^ set(members.items()) for u, v in views().items() if v != members}
                short = {u: len(v) for u, v in lines().items() if len(v) < LINES}
                raise AssertionError(f"views differ for {len(wrong)} users (e.g. {next(iter(wrong.items()), None)}); "
                                     f"lines missing for {short}")
            assert all(v == [f"line {n}" for n in range(LINES)] for v in lines().values()), lines()
            churned = sum(1 for s in load.stanzas if s.tag == f"{NS_CLIENT}presence"
                          and s.get("from", "").startswith(f"{room}/churn"))
            # 2 churners x 10 presences x 60 users produced; merged, mostly one each
            assert churned <= 2 * 2 * CHURNS * USERS // 2, churned
            peak = load.most_in_window(started, WINDOW)
            assert peak <= BUDGET * WINDOW * 1.5 + 200_000, (peak, BUDGET * WINDOW)   # unpaced: 2.08 MB
            log = gateway.log()
            assert log.count(": authenticated") == 1, log.count(": authenticated")
        finally:
            for client in (op, talker, *churners):
                if client is not None:
                    await client.close()
            await load.close()

    try:
        run(scenario(), timeout=150)
    finally:
        gateway.stop()
        ircd.stop()
