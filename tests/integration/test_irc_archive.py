"""
Stable ids and history for IRC rooms (issue 13), end to end: a real ngircd with raw
IRC clients, a real Prosody with slixmpp users, the gateway process between them.

- XEP-0359: every archived room message carries ``<stanza-id by=room>``; the room's
  reflection of the user's own message keeps its id and ``<origin-id>``.
- XEP-0313 (MAM) on the room's JID, per user (what their own connection received),
  with XEP-0059 paging and form filters.
- XEP-0045 history on join (maxstanzas, maxchars, seconds, since), before the subject.
- Retention: the archive keeps at most ``room_archive_rows`` messages per user and room.
"""

import asyncio
import datetime
import os
import time

import pytest

from gateway.testing.ngircd import Ngircd
from tests.integration.gateway_fixture import start_gateway
from tests.integration.harness import Client, run
from tests.integration.irc_support import RawIRC

DOMAIN = "ircarchive.localhost"
PRUNE_DOMAIN = "ircarchive2.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_SID = "urn:xmpp:sid:0"
NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
NS_DELAY = "urn:xmpp:delay"
NS_CLIENT = "jabber:client"


@pytest.fixture(scope="module")
def ircd(workdir):
    server = Ngircd(os.path.join(workdir, "ngircd-archive")).start()
    yield server
    server.stop()


def _options(ircd):
    return {"servers": {"localhost": {"host": "127.0.0.1", "port": ircd.port, "tls": False}},
            "throttle_rate": 0.0, "allowed_servers": ["localhost"]}


@pytest.fixture(scope="module")
def gateway(prosody, ircd, workdir):
    path = os.path.join(workdir, "archive-gw")
    os.makedirs(path, exist_ok=True)
    gw = start_gateway(prosody, path, "ircarchive", adapter="irc", options=_options(ircd))
    yield gw
    gw.stop()


def room(channel: str, domain: str = DOMAIN) -> str:
    return f"{channel}%localhost@{domain}"


def codes(p) -> set[int]:
    return {int(s.get("code")) for s in p.findall(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}status")}


def q(name, ns=NS_CLIENT):
    return f"{{{ns}}}{name}"


def body_of(m) -> str | None:
    return m.findtext(q("body"))


def parse_stamp(stamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)


async def join(client: Client, channel: str, nick: str, history: str = "", domain: str = DOMAIN):
    jid = room(channel, domain)
    client.send_raw(f"<presence to='{jid}/{nick}'><x xmlns='{NS_MUC}'>{history}</x></presence>")
    return await client.next_presence(lambda p: p.get("from") == f"{jid}/{nick}" and 110 in codes(p), timeout=30)


async def until_subject(client: Client, room_jid: str) -> list:
    """The room's messages up to and including its subject (what a join sends after the presences)."""
    got = []
    while True:
        m = await client.next_message(lambda m: m.get("from", "").startswith(room_jid), timeout=30)
        got.append(m)
        if m.find(q("subject")) is not None:
            return got


async def lines_from_irc(client: Client, speaker: RawIRC, channel: str, bodies: list[str]) -> list:
    """``speaker`` says each of ``bodies`` in ``channel``; the live messages the client got for them, in order."""
    for text in bodies:
        speaker.send(f"PRIVMSG {channel} :{text}")
    got = []
    for text in bodies:
        got.append(await client.next_message(lambda m, t=text: body_of(m) == t, timeout=30))
    return got


_queries = iter(range(10**6))


async def mam(client: Client, room_jid: str, rsm: str = "", form: str = ""):
    """A MAM query: (results in order, fin element)."""
    queryid = f"q{next(_queries)}"
    payload = f"<query xmlns='{NS_MAM}' queryid='{queryid}'>{form}{rsm}</query>"
    iq = await client.iq(room_jid, "set", payload)
    fin = iq.find(f"{{{NS_MAM}}}fin")
    # Every result was sent before the IQ result, and read before it: they are in the queue already.
    results = []
    while not client.messages.empty():
        m = client.messages.get_nowait()
        result = m.find(f"{{{NS_MAM}}}result")
        if result is not None and result.get("queryid") == queryid:
            results.append(m)
    return results, fin


def forwarded(result_message):
    res = result_message.find(f"{{{NS_MAM}}}result")
    fwd = res.find(f"{{{NS_FORWARD}}}forwarded")
    return res.get("id"), fwd.find(f"{{{NS_DELAY}}}delay"), fwd.find(q("message"))


def form(**fields) -> str:
    values = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    return (f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{NS_MAM}</value>"
            f"</field>{values}</x>")


def test_stanza_id_on_room_messages_and_origin_id_on_the_reflection(prosody, ircd, gateway):
    user = prosody.register(f"sid{os.getpid()}", "pw")
    jid = room("#sids")

    async def scenario():
        bob = await RawIRC(ircd.port, "sidbob").connect()
        bob.send("JOIN #sids")
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            await join(alice, "#sids", "sidalice")
            await bob.expect(lambda l: l.startswith(":sidalice!") and " JOIN " in l, timeout=20)
            [live] = await lines_from_irc(alice, bob, "#sids", ["hello from irc"])
            sid = live.find(f"{{{NS_SID}}}stanza-id")
            assert sid is not None and sid.get("by") == jid and sid.get("id")
            alice.send_raw(f"<message xmlns='jabber:client' to='{jid}' type='groupchat' id='own-1'>"
                           f"<body>mine</body><origin-id xmlns='{NS_SID}' id='origin-1'/></message>")
            mine = await alice.next_message(lambda m: body_of(m) == "mine", timeout=20)
            await bob.expect(lambda l: l.endswith("PRIVMSG #sids :mine"), timeout=20)
            assert mine.get("id") == "own-1" and mine.get("from") == f"{jid}/sidalice"
            assert mine.find(f"{{{NS_SID}}}origin-id").get("id") == "origin-1"
            own_sid = mine.find(f"{{{NS_SID}}}stanza-id")
            assert own_sid is not None and own_sid.get("by") == jid and own_sid.get("id") != sid.get("id")
            # The archive knows both under those ids, and the user's own message keeps its origin-id.
            results, fin = await mam(alice, jid)
            assert [forwarded(r)[0] for r in results] == [sid.get("id"), own_sid.get("id")]
            _, _, archived_own = forwarded(results[1])
            assert archived_own.find(f"{{{NS_SID}}}origin-id").get("id") == "origin-1"
            assert fin.get("complete") == "true"
        finally:
            await alice.stop()
            await bob.close()

    run(scenario(), 120)


def test_mam_on_the_room_with_paging_before_after_complete_and_filters(prosody, ircd, gateway):
    user = prosody.register(f"mam{os.getpid()}", "pw")
    jid = room("#mam")
    texts = [f"line {n}" for n in range(7)]

    async def scenario():
        bob = await RawIRC(ircd.port, "mambob").connect()
        bob.send("JOIN #mam")
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            await join(alice, "#mam", "mamalice")
            await bob.expect(lambda l: l.startswith(":mamalice!") and " JOIN " in l, timeout=20)
            live = await lines_from_irc(alice, bob, "#mam", texts)
            ids = [m.find(f"{{{NS_SID}}}stanza-id").get("id") for m in live]
            assert len(set(ids)) == 7

            def page(results):
                return [body_of(forwarded(r)[2]) for r in results]

            # The first page, oldest first; not complete.
            results, fin = await mam(alice, jid, f"<set xmlns='{NS_RSM}'><max>3</max></set>")
            assert page(results) == texts[:3] and fin.get("complete") != "true"
            rid, delay, msg = forwarded(results[0])
            assert rid == ids[0] and msg.get("from") == f"{jid}/mambob" and msg.get("type") == "groupchat"
            assert delay is not None and delay.get("stamp")
            assert fin.find(f"{{{NS_RSM}}}set/{{{NS_RSM}}}first").text == ids[0]
            assert fin.find(f"{{{NS_RSM}}}set/{{{NS_RSM}}}last").text == ids[2]
            # after: the next pages; the last one is complete.
            results, fin = await mam(alice, jid, f"<set xmlns='{NS_RSM}'><max>3</max><after>{ids[2]}</after></set>")
            assert page(results) == texts[3:6] and fin.get("complete") != "true"
            results, fin = await mam(alice, jid, f"<set xmlns='{NS_RSM}'><max>3</max><after>{ids[5]}</after></set>")
            assert page(results) == texts[6:] and fin.get("complete") == "true"
            # An empty before: the last page, and paging backwards with before.
            results, fin = await mam(alice, jid, f"<set xmlns='{NS_RSM}'><max>2</max><before/></set>")
            assert page(results) == texts[5:] and fin.get("complete") != "true"
            results, fin = await mam(alice, jid, f"<set xmlns='{NS_RSM}'><max>2</max><before>{ids[5]}</before></set>")
            assert page(results) == texts[3:5]
            results, fin = await mam(alice, jid, f"<set xmlns='{NS_RSM}'><max>9</max><before>{ids[2]}</before></set>")
            assert page(results) == texts[:2] and fin.get("complete") == "true"
            # Form filters: start and end (inclusive), by the archive's own stamps.
            stamps = [forwarded(r)[1].get("stamp") for r in (await mam(alice, jid))[0]]
            results, _ = await mam(alice, jid, form=form(start=stamps[3]))
            assert page(results) == texts[3:]
            results, fin = await mam(alice, jid, form=form(start=stamps[1], end=stamps[2]))
            assert page(results) == texts[1:3] and fin.get("complete") == "true"
            # Errors: unknown ids, a malformed form, a room the user was never in.
            condition, _ = await alice.iq_error(jid, "set", f"<query xmlns='{NS_MAM}'><set xmlns='{NS_RSM}'>"
                                                           "<after>no-such-id</after></set></query>")
            assert condition == "item-not-found"
            condition, _ = await alice.iq_error(jid, "set", f"<query xmlns='{NS_MAM}'><set xmlns='{NS_RSM}'>"
                                                           "<before>no-such-id</before></set></query>")
            assert condition == "item-not-found"
            condition, _ = await alice.iq_error(jid, "set", f"<query xmlns='{NS_MAM}'>{form(start='yesterday')}</query>")
            assert condition == "bad-request"
            condition, _ = await alice.iq_error(jid, "set", f"<query xmlns='{NS_MAM}'><set xmlns='{NS_RSM}'>"
                                                           "<max>many</max></set></query>")
            assert condition == "bad-request"
            condition, _ = await alice.iq_error(room("#never"), "set", f"<query xmlns='{NS_MAM}'/>")
            assert condition == "forbidden"
            # Another user sees only what their own connection received: nothing of alice's archive.
            other = prosody.register(f"mamother{os.getpid()}", "pw")
            carol = await Client(other, "pw").start(prosody.c2s_port)
            try:
                condition, _ = await carol.iq_error(jid, "set", f"<query xmlns='{NS_MAM}'/>")
                assert condition == "forbidden"
            finally:
                await carol.stop()
            # The query form (§5.1): the filters it takes.
            fields = await alice.iq(jid, "get", f"<query xmlns='{NS_MAM}'/>")
            assert {f.get("var") for f in fields.iter("{jabber:x:data}field")} >= {"FORM_TYPE", "start", "end"}
            # The room says it has an archive.
            info = await alice.iq(jid, "get", "<query xmlns='http://jabber.org/protocol/disco#info'/>")
            features = {f.get("var") for f in info.iter("{http://jabber.org/protocol/disco#info}feature")}
            assert NS_MAM in features
        finally:
            await alice.stop()
            await bob.close()

    run(scenario(), 150)


def test_history_on_join_with_each_limit(prosody, ircd, gateway):
    """A second client of the user joins a room the first one is in: history as asked, with delay and stanza-id, before the subject."""
    user = prosody.register(f"hist{os.getpid()}", "pw")
    jid = room("#hist")
    # Short bodies, except one long one: maxchars can then cut between them whatever the stanza overhead.
    texts = ["h0", "h1", "h2", "h3 " + "x" * 380, "h4", "h5"]

    async def history(client, nick, element):
        await join(client, "#hist", nick, element)
        got = await until_subject(client, jid)
        *before_subject, subject = got
        for m in before_subject:
            assert m.find(f"{{{NS_DELAY}}}delay") is not None
            sid = m.find(f"{{{NS_SID}}}stanza-id")
            assert sid is not None and sid.get("by") == jid
        client.send_raw(f"<presence to='{jid}/{nick}' type='unavailable'/>")
        await client.next_presence(lambda p: p.get("from") == f"{jid}/{nick}" and p.get("type") == "unavailable",
                                   timeout=30)
        return [body_of(m) for m in before_subject]

    async def scenario():
        bob = await RawIRC(ircd.port, "histbob").connect()
        bob.send("JOIN #hist")
        alice = await Client(user, "pw").start(prosody.c2s_port)
        second = await Client(user, "pw").start(prosody.c2s_port)
        try:
            await join(alice, "#hist", "histalice")
            await until_subject(alice, jid)
            await bob.expect(lambda l: l.startswith(":histalice!") and " JOIN " in l, timeout=20)
            await lines_from_irc(alice, bob, "#hist", texts[:3])
            # A gap in time between h2 and h3, for the seconds limit (time passing, not a wait for an event).
            await asyncio.sleep(8)
            await lines_from_irc(alice, bob, "#hist", texts[3:])
            stamps = [forwarded(r)[1].get("stamp") for r in (await mam(alice, jid))[0]]
            assert len(stamps) == 6

            assert await history(second, "histalice", "<history maxstanzas='2'/>") == texts[4:]
            assert await history(second, "histalice", "") == texts           # the default (20) takes all six
            assert await history(second, "histalice", "<history maxstanzas='0'/>") == []
            assert await history(second, "histalice", "<history maxchars='0'/>") == []
            # Each short stanza is well under 500 characters, the long one well over 400 more.
            assert await history(second, "histalice", "<history maxchars='1000'/>") == texts[4:]
            assert await history(second, "histalice", f"<history since='{stamps[1]}'/>") == texts[1:]
            # h3 on were said 8 s after h2: 'seconds' reaching back to 1 s short of h2 takes h3 on.
            seconds = int(time.time() - parse_stamp(stamps[2]).timestamp() - 1)
            assert await history(second, "histalice", f"<history seconds='{seconds}'/>") == texts[3:]
            assert await history(second, "histalice", f"<history seconds='{seconds}' maxstanzas='1'/>") == texts[5:]
        finally:
            await alice.stop()
            await second.stop()
            await bob.close()

    run(scenario(), 180)


def test_history_length_from_the_channel_setting(prosody, ircd, gateway):
    """With no <history/>, the user's max_history for the channel (muc#owner or configure) sets how many."""
    user = prosody.register(f"histset{os.getpid()}", "pw")
    jid = room("#histset")

    async def scenario():
        bob = await RawIRC(ircd.port, "hsbob").connect()
        bob.send("JOIN #histset")
        alice = await Client(user, "pw").start(prosody.c2s_port)
        second = await Client(user, "pw").start(prosody.c2s_port)
        try:
            await join(alice, "#histset", "hsalice")
            await until_subject(alice, jid)
            await bob.expect(lambda l: l.startswith(":hsalice!") and " JOIN " in l, timeout=20)
            await lines_from_irc(alice, bob, "#histset", ["s0", "s1", "s2", "s3"])
            result = await alice.iq(jid, "set", "<query xmlns='http://jabber.org/protocol/muc#owner'>"
                                                "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
                                                "<value>http://jabber.org/protocol/muc#roomconfig</value></field>"
                                                "<field var='max_history'><value>2</value></field></x></query>")
            assert result.get("type") == "result"
            await join(second, "#histset", "hsalice")
            got = await until_subject(second, jid)
            assert [body_of(m) for m in got[:-1]] == ["s2", "s3"]
        finally:
            await alice.stop()
            await second.stop()
            await bob.close()

    run(scenario(), 120)


@pytest.fixture
def pruning_gateway(prosody, ircd, workdir):
    path = os.path.join(workdir, "archive-prune-gw")
    os.makedirs(path, exist_ok=True)
    gw = start_gateway(prosody, path, "ircarchive2", adapter="irc", options=_options(ircd),
                       sections={"retention": {"interval": 1.0, "room_archive_rows": 3}})
    yield gw
    gw.stop()


def test_retention_keeps_the_newest_rows_per_room(prosody, ircd, pruning_gateway):
    user = prosody.register(f"prune{os.getpid()}", "pw")
    jid = room("#prune", PRUNE_DOMAIN)
    texts = [f"p{n}" for n in range(6)]

    async def scenario():
        bob = await RawIRC(ircd.port, "prunebob").connect()
        bob.send("JOIN #prune")
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            await join(alice, "#prune", "prunealice", domain=PRUNE_DOMAIN)
            await bob.expect(lambda l: l.startswith(":prunealice!") and " JOIN " in l, timeout=20)
            await lines_from_irc(alice, bob, "#prune", texts)
            deadline = time.monotonic() + 60
            while True:
                results, fin = await mam(alice, jid)
                bodies = [body_of(forwarded(r)[2]) for r in results]
                if bodies == texts[3:] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert bodies == texts[3:] and fin.get("complete") == "true"
        finally:
            await alice.stop()
            await bob.close()

    run(scenario(), 120)
