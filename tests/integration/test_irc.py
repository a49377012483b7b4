"""
IRC end to end: a real ngircd with a raw IRC client on one side, a real Prosody
with slixmpp users on the other, and the gateway process between them.
"""

import asyncio
import os
import re

import pytest

from gateway.testing.ngircd import Ngircd
from tests.integration.gateway_fixture import start_gateway
from tests.integration.harness import Client, body, http_get, run
from tests.integration.irc_support import RawIRC, ScriptedSASLServer
from gateway.testing.process import free_port

DOMAIN = "irc.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"


@pytest.fixture(scope="module")
def ircd(workdir):
    server = Ngircd(os.path.join(workdir, "ngircd"), tls=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def irc_gateway(prosody, ircd, workdir):
    path = os.path.join(workdir, "irc-gw")
    os.makedirs(path, exist_ok=True)
    scripted_port = free_port()
    gateway = start_gateway(prosody, path, "irc", adapter="irc", options={
        "servers": {"localhost": {"host": "127.0.0.1", "port": ircd.port, "tls": False},
                    "sasl.test": {"host": "127.0.0.1", "port": scripted_port, "tls": False},
                    # the same ngircd over TLS: a self-signed certificate, verified (the default) or not
                    "tls.test": {"host": "127.0.0.1", "port": ircd.tls_port},
                    "tlsnoverify.test": {"host": "127.0.0.1", "port": ircd.tls_port, "verify": False}},
        "throttle_rate": 0.0, "allowed_servers": ["localhost", "sasl.test", "tls.test", "tlsnoverify.test"]},
        web=True)
    gateway.scripted_port = scripted_port
    yield gateway
    gateway.stop()


def room(channel: str) -> str:
    return f"{channel}%localhost@{DOMAIN}"


def muc_item(p):
    return p.find(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}item")


def statuses(p) -> set[int]:
    return {int(s.get("code")) for s in p.findall(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}status")}


async def join(client: Client, channel: str, nick: str):
    """Join; the user's own presence (110) and the occupants' presences sent before it."""
    client.send_raw(f"<presence to='{room(channel)}/{nick}'><x xmlns='{NS_MUC}'/></presence>")
    before = []
    while True:
        p = await client.next_presence(lambda p: p.get("from", "").startswith(room(channel) + "/"))
        if 110 in statuses(p):
            return p, before
        before.append(p)


def test_channel_as_group_chat(prosody, ircd, irc_gateway):
    user = prosody.register(f"ircalice{os.getpid()}", "pw")

    async def scenario():
        bob = await RawIRC(ircd.port, "bob").connect()
        bob.send("JOIN #test", "TOPIC #test :Welcome to #test")
        await bob.expect(lambda l: " TOPIC #test " in l or " 332 " in l)
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            # Join: occupants from NAMES with roles from modes, then self (110), then the topic.
            alice.send_raw(f"<presence to='{room('#test')}/alice'><x xmlns='{NS_MUC}'/></presence>")
            occupant = await alice.next_presence(lambda p: p.get("from") == f"{room('#test')}/bob")
            assert muc_item(occupant).get("role") == "moderator"            # bob created the channel: op
            own = await alice.next_presence(lambda p: p.get("from") == f"{room('#test')}/alice")
            assert 110 in statuses(own) and muc_item(own).get("role") == "participant"
            subject = await alice.next_message(lambda m: m.find("{jabber:client}subject") is not None)
            assert subject.find("{jabber:client}subject").text == "Welcome to #test"
            await bob.expect(lambda l: l.startswith(":alice!") and " JOIN " in l)
            info = await alice.plugin["xep_0030"].get_info(jid=room("#test"), timeout=10)
            assert ("conference", "irc") in {i[:2] for i in info["disco_info"]["identities"]}
            assert NS_MUC in info["disco_info"]["features"]

            # Both ways, and the room reflects alice's own message.
            bob.send("PRIVMSG #test :hello from \x02irc\x02")
            m = await alice.next_message(lambda m: body(m) == "hello from irc")
            assert m.get("type") == "groupchat" and m.get("from") == f"{room('#test')}/bob"
            sent_id = alice.send_chat(room("#test"), "hello from xmpp", mtype="groupchat")
            await bob.expect(lambda l: l.startswith(":alice!") and l.endswith("PRIVMSG #test :hello from xmpp"))
            echo = await alice.next_message(lambda m: m.get("id") == sent_id)
            assert echo.get("from") == f"{room('#test')}/alice" and body(echo) == "hello from xmpp"

            # Characters XML forbids (BEL, a stray CTCP delimiter) are dropped; the stream survives.
            bob.send("PRIVMSG #test :ding\x07dong\x01!")
            await alice.next_message(lambda m: body(m) == "dingdong!")
            bob.send("NOTICE #test :server maintenance at noon")
            await alice.next_message(lambda m: body(m) == "[notice] server maintenance at noon")

            # /me both ways.
            alice.send_chat(room("#test"), "/me waves", mtype="groupchat")
            await bob.expect(lambda l: l.endswith("PRIVMSG #test :\x01ACTION waves\x01"))
            bob.send("PRIVMSG #test :\x01ACTION dances\x01")
            await alice.next_message(lambda m: body(m) == "/me dances" and m.get("from").endswith("/bob"))

            # A 2,000-byte message arrives complete, in order, in lines within the limit.
            long_text = "".join(f"{i:04d}é" for i in range(334))         # 334 * 6 bytes ≈ 2,000
            alice.send_chat(room("#test"), long_text, mtype="groupchat")
            got, parts = "", []
            while len(got) < len(long_text):
                line = await bob.expect(lambda l: l.startswith(":alice!") and " PRIVMSG #test :" in l)
                parts.append(line)
                got += line.split(" PRIVMSG #test :", 1)[1]
            assert got == long_text and len(parts) > 1
            assert all(len(p.encode()) + 2 <= 512 for p in parts)

            # CR/LF from XMPP never becomes a second IRC command.
            alice.send_chat(room("#test"), "line one\r\nQUIT :pwned\r\nJOIN #evil", mtype="groupchat")
            lines = await bob.collect(lambda l: l.startswith(":alice!"), 3)
            assert [l.split(" ", 1)[1] for l in lines] == ["PRIVMSG #test :line one", "PRIVMSG #test :QUIT :pwned",
                                                            "PRIVMSG #test :JOIN #evil"]

            # Private messages: from IRC, to nick%server, and through room/Nick.
            bob.send("PRIVMSG alice :psst")
            pm = await alice.next_message(lambda m: body(m) == "psst")
            assert pm.get("from") == f"bob%localhost@{DOMAIN}" and pm.get("type") == "chat"
            alice.send_chat(f"bob%localhost@{DOMAIN}", "direct reply")
            await bob.expect(lambda l: l.startswith(":alice!") and l.endswith("PRIVMSG bob :direct reply"))
            alice.send_chat(f"{room('#test')}/bob", "via the room")
            await bob.expect(lambda l: l.startswith(":alice!") and l.endswith("PRIVMSG bob :via the room"))

            # Topic change, nick change (303), voice (role), part.
            bob.send("TOPIC #test :New topic")
            s = await alice.next_message(lambda m: m.find("{jabber:client}subject") is not None)
            assert s.find("{jabber:client}subject").text == "New topic" and s.get("from").endswith("/bob")
            carol = await RawIRC(ircd.port, "carol").connect()
            carol.send("JOIN #test")
            joined = await alice.next_presence(lambda p: p.get("from") == f"{room('#test')}/carol")
            assert muc_item(joined).get("role") == "participant"
            bob.send("MODE #test +v carol")
            voiced = await alice.next_presence(lambda p: p.get("from") == f"{room('#test')}/carol")
            assert muc_item(voiced).get("affiliation") == "member"
            bob.send("NICK bobby")
            gone = await alice.next_presence(lambda p: p.get("from") == f"{room('#test')}/bob")
            assert gone.get("type") == "unavailable" and 303 in statuses(gone)
            assert muc_item(gone).get("nick") == "bobby"
            await alice.next_presence(lambda p: p.get("from") == f"{room('#test')}/bobby" and p.get("type") is None)
            carol.send("PART #test :see you")
            parted = await alice.next_presence(lambda p: p.get("from") == f"{room('#test')}/carol")
            assert parted.get("type") == "unavailable"
            await carol.close()

            # Kick: alice's own unavailable presence with 307 and 110.
            bob.send("KICK #test alice :behave")
            kicked = await alice.next_presence(lambda p: p.get("from") == f"{room('#test')}/alice"
                                               and p.get("type") == "unavailable")
            assert {307, 110} <= statuses(kicked)
        finally:
            await alice.stop()
            await bob.close()

    run(scenario(), timeout=90)


def test_two_resources_share_one_connection_and_leaving_all_disconnects(prosody, ircd, irc_gateway):
    user = prosody.register(f"ircdan{os.getpid()}", "pw")

    async def scenario():
        bob = await RawIRC(ircd.port, "bob2").connect()
        bob.send("JOIN #share")
        phone = await Client(f"{user}/phone", "pw").start(prosody.c2s_port)
        laptop = await Client(f"{user}/laptop", "pw").start(prosody.c2s_port)
        try:
            await join(phone, "#share", "dan")
            await bob.expect(lambda l: l.startswith(":dan!") and " JOIN " in l)
            own, occupants = await join(laptop, "#share", "dan")     # state replayed from the shared connection
            assert muc_item(own).get("role") == "participant"
            assert [p.get("from") for p in occupants] == [f"{room('#share')}/bob2"]
            bob.send("NAMES #share")
            names = await bob.expect(lambda l: " 353 " in l and "#share" in l)
            assert names.split(":")[-1].split().count("dan") == 1
            assert sum(1 for l in bob.seen if l.startswith(":dan!") and " JOIN " in l) == 1

            bob.send("PRIVMSG #share :to both")
            await phone.next_message(lambda m: body(m) == "to both")
            await laptop.next_message(lambda m: body(m) == "to both")

            # CTCP VERSION is answered.
            bob.send("PRIVMSG dan :\x01VERSION\x01")
            version = await bob.expect(lambda l: l.startswith(":dan!") and "NOTICE bob2 :\x01VERSION" in l)
            assert "xmpp-gateway" in version
            bob.send("PRIVMSG dan :\x01PING 12345\x01")
            await bob.expect(lambda l: l.startswith(":dan!") and l.endswith("NOTICE bob2 :\x01PING 12345\x01"))

            # A nick in use: the service changes it and says so (210).
            other = await Client(prosody.register(f"ircbob{os.getpid()}", "pw"), "pw").start(prosody.c2s_port)
            try:
                other.send_raw(f"<presence to='{room('#share')}/bob2'><x xmlns='{NS_MUC}'/></presence>")
                own = await other.next_presence(lambda p: 110 in statuses(p))
                assert 210 in statuses(own) and own.get("from") == f"{room('#share')}/bob2_"
            finally:
                await other.stop()

            phone.send_raw(f"<presence to='{room('#share')}/dan' type='unavailable'/>")
            left = await phone.next_presence(lambda p: p.get("from") == f"{room('#share')}/dan"
                                             and p.get("type") == "unavailable")
            assert 110 in statuses(left)
            await asyncio.sleep(0.5)
            assert not any(l.startswith(":dan!") and (" PART " in l or " QUIT " in l) for l in bob.seen)
            laptop.send_raw(f"<presence to='{room('#share')}/dan' type='unavailable'/>")
            await bob.expect(lambda l: l.startswith(":dan!") and " PART #share" in l)
            for _ in range(20):                      # no room left: the connection is closed
                await asyncio.sleep(0.25)
                bob.send("WHOIS dan")
                reply = await bob.expect(lambda l: " 401 " in l or " 311 " in l)
                if " 401 " in reply:
                    break
            assert " 401 " in reply
        finally:
            await phone.stop()
            await laptop.stop()
            await bob.close()

    run(scenario(), timeout=60)


def irc_metric(gateway, name: str) -> float:
    """A sample of the gateway's /metrics for the server "localhost" (0 when not there yet)."""
    status, text = http_get(f"http://127.0.0.1:{gateway.web_port}/metrics")
    assert status == 200
    found = re.search(rf'^{name}{{component="{DOMAIN}",server="localhost"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_irc_server_restart_reconnects_and_rejoins(prosody, ircd, irc_gateway):
    """And the metrics the reconnect-storm alert and the dashboard read move with it."""
    user = prosody.register(f"irceve{os.getpid()}", "pw")
    reconnects = irc_metric(irc_gateway, "xmpp_gateway_irc_reconnects_total")
    disconnects = irc_metric(irc_gateway, "xmpp_gateway_irc_disconnects_total")

    async def scenario():
        eve = await Client(user, "pw").start(prosody.c2s_port)
        try:
            await join(eve, "#restart", "eve")
            await asyncio.to_thread(ircd.restart)
            frank = await RawIRC(ircd.port, "frank").connect()
            frank.send("JOIN #restart")
            await frank.expect(lambda l: l.startswith(":frank!") and " JOIN " in l)
            await frank.expect(lambda l: l.startswith(":eve!") and " JOIN " in l, timeout=20)   # rejoined
            await eve.next_presence(lambda p: p.get("from") == f"{room('#restart')}/frank")
            frank.send("PRIVMSG #restart :welcome back")
            await eve.next_message(lambda m: body(m) == "welcome back")
            await frank.close()
            assert irc_metric(irc_gateway, "xmpp_gateway_irc_connections") >= 1
            assert irc_metric(irc_gateway, "xmpp_gateway_irc_reconnects_total") >= reconnects + 1
            assert irc_metric(irc_gateway, "xmpp_gateway_irc_disconnects_total") >= disconnects + 1
        finally:
            await eve.stop()

    run(scenario(), timeout=60)


def test_sasl_plain_through_cap_with_server_time_and_msgid(prosody, irc_gateway):
    """Against a scripted peer (the order of CAP and AUTHENTICATE); real InspIRCd + atheme: test_irc_services.py."""
    user = prosody.register(f"ircsasl{os.getpid()}", "pw")

    async def scenario():
        peer = await ScriptedSASLServer(irc_gateway.scripted_port, account="saslnick", password="sasl-s3cret").start()
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            server_jid = f"sasl.test@{DOMAIN}"
            items = await client.plugin["xep_0030"].get_items(jid=server_jid,
                                                              node="http://jabber.org/protocol/commands", timeout=10)
            # configure, and get-irc-connection-info (the server JID's connection, test_irc_parity.py)
            # (slixmpp hands the items over as a set: no order to compare)
            assert {i[1] for i in items["disco_items"]["items"]} == {"configure", "get-irc-connection-info"}
            first = await client.plugin["xep_0050"].send_command(server_jid, "configure", timeout=10)
            assert {"nick", "password", "sasl_password", "after_connect"} <= set(first["command"]["form"].get_fields())
            done = client.Iq(stype="set", sto=server_jid)
            done["command"]["node"] = "configure"
            done["command"]["sessionid"] = first["command"]["sessionid"]
            done["command"]["action"] = "complete"
            form = done["command"]["form"]
            form["type"] = "submit"
            form.add_field("sasl_password", value="sasl-s3cret")
            completed = await done.send(timeout=10)
            assert completed["command"]["status"] == "completed"

            client.send_raw(f"<presence to='#chan%sasl.test@{DOMAIN}/saslnick'><x xmlns='{NS_MUC}'/></presence>")
            old = await client.next_message(lambda m: body(m) == "from the past")
            delay = old.find("{urn:xmpp:delay}delay")
            assert delay is not None and delay.get("stamp").startswith("2020-01-02T03:04:05")
            assert old.find("{urn:xmpp:sid:0}stanza-id").get("id") == "abc123"
            assert peer.authenticated and "CAP REQ" in " ".join(peer.received)
            assert peer.received.index("AUTHENTICATE PLAIN") < peer.received.index("CAP END")
        finally:
            await client.stop()
            peer.close()

    run(scenario(), timeout=60)
    assert "sasl-s3cret" not in irc_gateway.log()


def test_hostile_tags_are_ignored_and_the_stream_stays_up(prosody, irc_gateway):
    """
    A server-time that overflows and a msgid with a control character must not
    cost the message, nor break the component stream every user shares.
    """
    user = prosody.register(f"irctags{os.getpid()}", "pw")
    overflow = "2024-01-01T00:00:00.5e400Z"

    async def scenario():
        peer = await ScriptedSASLServer(irc_gateway.scripted_port, account=None, after_welcome=(
            f"@time={overflow};msgid=pm\x01id :op!o@h PRIVMSG {{nick}} :private, hostile tags",
        ), after_join=(
            f"@time={overflow};msgid=evil\x01id :op!o@h PRIVMSG {{channel}} :hostile tags",
            "@time=1970-01-01T00:00:00Z;msgid=<b>&amp; :op!o@h PRIVMSG {channel} :ancient",
            ":op!o@h PRIVMSG {channel} :after them",
        )).start()
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            client.send_raw(f"<presence to='#tags%sasl.test@{DOMAIN}/tagger'><x xmlns='{NS_MUC}'/></presence>")
            # The private message (sent at the welcome, through the outbox) may come before or after
            # the room lines: each is waited for whatever the order, none skipped as not the one awaited.
            wanted = {"hostile tags", "ancient", "after them", "private, hostile tags"}
            got = {}
            while len(got) < len(wanted):
                m = await client.next_message(lambda m: body(m) in wanted and body(m) not in got)
                got[body(m)] = m
            for text in ("hostile tags", "ancient", "after them"):
                m = got[text]
                assert m.get("type") == "groupchat"
                assert m.find("{urn:xmpp:delay}delay") is None
                # Not the hostile msgid: the room archive's own id (docs/irc.md, stable ids).
                assert re.fullmatch(r"[0-9a-f]{18}", m.find("{urn:xmpp:sid:0}stanza-id").get("id"))
            pm = got["private, hostile tags"]
            assert pm.get("from") == f"op%sasl.test@{DOMAIN}" and pm.find("{urn:xmpp:delay}delay") is None
            info = await client.plugin["xep_0030"].get_info(jid=DOMAIN, timeout=10)      # the component still answers
            assert info["disco_info"]["identities"]
        finally:
            await client.stop()
            peer.close()

    run(scenario(), timeout=60)
    assert "parked" not in irc_gateway.log()


def test_unreachable_server_is_a_join_error(prosody, irc_gateway):
    user = prosody.register(f"ircnone{os.getpid()}", "pw")

    async def scenario():
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            # sasl.test's scripted peer is not running now: nothing listens on its port
            client.send_raw(f"<presence to='#nowhere%sasl.test@{DOMAIN}/me'><x xmlns='{NS_MUC}'/></presence>")
            err = await client.next_presence(lambda p: p.get("type") == "error")
            cond = err.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}remote-server-not-found")
            assert cond is not None and "cannot connect to sasl.test" in "".join(err.itertext())
            client.send_raw(f"<presence to='#x%not.allowed.example@{DOMAIN}/me'><x xmlns='{NS_MUC}'/></presence>")
            refused = await client.next_presence(lambda p: p.get("type") == "error")
            assert refused.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}not-allowed") is not None
        finally:
            await client.stop()

    run(scenario(), timeout=60)


def test_outgoing_throttle(prosody, ircd, fresh_dir):
    import time as _time

    gateway = start_gateway(prosody, fresh_dir, "ircslow", adapter="irc", options={
        "servers": {"localhost": {"host": "127.0.0.1", "port": ircd.port, "tls": False}},
        "throttle_rate": 5.0, "throttle_burst": 3})
    user = prosody.register(f"ircslow{os.getpid()}", "pw")

    async def scenario():
        watcher = await RawIRC(ircd.port, "watcher").connect()
        watcher.send("JOIN #slow")
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            client.send_raw(f"<presence to='#slow%localhost@ircslow.localhost/slowpoke'><x xmlns='{NS_MUC}'/>"
                            "</presence>")
            await watcher.expect(lambda l: l.startswith(":slowpoke!") and " JOIN " in l)
            await asyncio.sleep(1.0)                  # let the bucket fill again after JOIN
            client.send_chat("#slow%localhost@ircslow.localhost", "\n".join(f"line {i}" for i in range(13)),
                             mtype="groupchat")
            stamps = []
            for i in range(13):
                line = await watcher.expect(lambda l: " PRIVMSG #slow :" in l)
                assert line.endswith(f"line {i}")
                stamps.append(_time.monotonic())
            # 3 at once, then 5 per second: the 13th line is about 2 s after the first.
            assert stamps[2] - stamps[0] < 0.5 and 1.6 < stamps[-1] - stamps[0] < 4.0
        finally:
            await client.stop()
            await watcher.close()

    try:
        run(scenario(), timeout=60)
    finally:
        gateway.stop()


def test_server_jid_lists_channels_with_paging(prosody, ircd, irc_gateway):
    user = prosody.register(f"irclist{os.getpid()}", "pw")
    NS_ITEMS, NS_RSM = "http://jabber.org/protocol/disco#items", "http://jabber.org/protocol/rsm"

    async def scenario():
        lister = await RawIRC(ircd.port, "lister").connect()
        for n in range(5):
            lister.send(f"JOIN #list{n}")
        lister.send("TOPIC #list2 :the second")
        await lister.expect(lambda l: " TOPIC #list2 " in l)
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            items, after = [], None
            for _ in range(10):
                rsm = f"<set xmlns='{NS_RSM}'><max>2</max>" + (f"<after>{after}</after>" if after else "") + "</set>"
                page = await client.iq(f"localhost@{DOMAIN}", "get", f"<query xmlns='{NS_ITEMS}'>{rsm}</query>")
                found = page.findall(f".//{{{NS_ITEMS}}}item")
                assert len(found) <= 2
                items += found
                count = int(page.find(f".//{{{NS_RSM}}}count").text)
                last = page.find(f".//{{{NS_RSM}}}last")
                if last is None or len(items) >= count:
                    break
                after = last.text
            jids = [i.get("jid") for i in items if i.get("jid").startswith("#list")]
            assert jids == [f"#list{n}%localhost@{DOMAIN}" for n in range(5)]
            second = next(i for i in items if i.get("jid").startswith("#list2%"))
            assert "the second" in second.get("name")
            # An absurd <max/> is a bad request, answered (it used to leave the IQ unanswered).
            for bad in ("lots", "-1"):
                cond, _ = await client.iq_error(f"localhost@{DOMAIN}", "get", f"<query xmlns='{NS_ITEMS}'>"
                                                f"<set xmlns='{NS_RSM}'><max>{bad}</max></set></query>")
                assert cond == "bad-request"
        finally:
            await client.stop()
            await lister.close()

    run(scenario(), timeout=60)


def test_tls_certificates_are_verified_by_default(prosody, irc_gateway):
    user = prosody.register(f"irctls{os.getpid()}", "pw")

    async def scenario():
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            client.send_raw(f"<presence to='#tls%tls.test@{DOMAIN}/tlsuser'><x xmlns='{NS_MUC}'/></presence>")
            err = await client.next_presence(lambda p: p.get("type") == "error", timeout=20)
            assert "cannot connect to tls.test" in "".join(err.itertext())
            client.send_raw(f"<presence to='#tls%tlsnoverify.test@{DOMAIN}/tlsuser'><x xmlns='{NS_MUC}'/></presence>")
            own = await client.next_presence(lambda p: p.get("from") == f"#tls%tlsnoverify.test@{DOMAIN}/tlsuser"
                                             and 110 in statuses(p), timeout=20)
            assert own.get("type") is None                       # joined over TLS
        finally:
            await client.stop()

    run(scenario(), timeout=60)


def test_fixed_server_mode(prosody, ircd, fresh_dir):
    gateway = start_gateway(prosody, fresh_dir, "ircfixed", adapter="irc", options={
        "servers": {"localhost": {"host": "127.0.0.1", "port": ircd.port, "tls": False}},
        "fixed_server": "localhost", "throttle_rate": 0.0})
    user = prosody.register(f"ircfix{os.getpid()}", "pw")
    fixed = "ircfixed.localhost"

    async def scenario():
        ivan = await RawIRC(ircd.port, "ivan").connect()
        ivan.send("JOIN #fixed")
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            client.send_raw(f"<presence to='#fixed@{fixed}/judy'><x xmlns='{NS_MUC}'/></presence>")
            occupant = await client.next_presence(lambda p: p.get("from") == f"#fixed@{fixed}/ivan")
            assert muc_item(occupant) is not None
            await client.next_presence(lambda p: p.get("from") == f"#fixed@{fixed}/judy" and 110 in statuses(p))
            ivan.send("PRIVMSG #fixed :short addresses")
            m = await client.next_message(lambda m: body(m) == "short addresses")
            assert m.get("from") == f"#fixed@{fixed}/ivan"
            ivan.send("PRIVMSG judy :hi judy")
            pm = await client.next_message(lambda m: body(m) == "hi judy")
            assert pm.get("from") == f"ivan@{fixed}"
            client.send_chat(f"ivan@{fixed}", "hi ivan")
            await ivan.expect(lambda l: l.startswith(":judy!") and l.endswith("PRIVMSG ivan :hi ivan"))
        finally:
            await client.stop()
            await ivan.close()

    try:
        run(scenario(), timeout=60)
    finally:
        gateway.stop()


def test_channel_key_from_the_muc_password(prosody, ircd, irc_gateway):
    user = prosody.register(f"irckey{os.getpid()}", "pw")

    async def scenario():
        keeper = await RawIRC(ircd.port, "keeper").connect()
        keeper.send("JOIN #locked", "MODE #locked +k s3same")
        await keeper.expect(lambda l: " MODE #locked +k" in l)
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            client.send_raw(f"<presence to='{room('#locked')}/kim'><x xmlns='{NS_MUC}'/></presence>")
            refused = await client.next_presence(lambda p: p.get("type") == "error")
            assert refused.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}forbidden") is not None
            client.send_raw(f"<presence to='{room('#locked')}/kim'><x xmlns='{NS_MUC}'>"
                            "<password>s3same</password></x></presence>")
            await client.next_presence(lambda p: p.get("from") == f"{room('#locked')}/kim" and 110 in statuses(p))
            await keeper.expect(lambda l: l.startswith(":kim!") and " JOIN " in l)
        finally:
            await client.stop()
            await keeper.close()

    run(scenario(), timeout=60)


def test_user_changes_nick_and_a_taken_nick_is_a_conflict(prosody, ircd, irc_gateway):
    user = prosody.register(f"ircnick{os.getpid()}", "pw")

    async def scenario():
        owner = await RawIRC(ircd.port, "owner").connect()
        owner.send("JOIN #nicks")
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            await join(client, "#nicks", "nora")
            await owner.expect(lambda l: l.startswith(":nora!") and " JOIN " in l)
            client.send_raw(f"<presence to='{room('#nicks')}/norah'/>")
            await owner.expect(lambda l: l.startswith(":nora!") and " NICK " in l and l.endswith("norah"))
            gone = await client.next_presence(lambda p: p.get("from") == f"{room('#nicks')}/nora")
            assert gone.get("type") == "unavailable" and {303, 110} <= statuses(gone)
            assert muc_item(gone).get("nick") == "norah"
            back = await client.next_presence(lambda p: p.get("from") == f"{room('#nicks')}/norah")
            assert back.get("type") is None and 110 in statuses(back)

            client.send_raw(f"<presence to='{room('#nicks')}/owner'/>")
            err = await client.next_presence(lambda p: p.get("type") == "error")
            assert err.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}conflict") is not None
            # still norah: kicking norah reaches the user as their own kick (110)
            owner.send("KICK #nicks norah :test")
            kicked = await client.next_presence(lambda p: p.get("from") == f"{room('#nicks')}/norah"
                                                and p.get("type") == "unavailable")
            assert {307, 110} <= statuses(kicked)
        finally:
            await client.stop()
            await owner.close()

    run(scenario(), timeout=60)


def test_private_messages_survive_an_irc_server_restart_exactly_once_in_order(prosody, ircd, fresh_dir):
    """
    Lines waiting behind a slow throttle when the IRC server goes away are not
    lost and not repeated: the outbox keeps each message until all its lines are
    written, and a message cut short resumes where it stopped.
    """
    gateway = start_gateway(prosody, fresh_dir, "ircslow", adapter="irc", options={
        "servers": {"localhost": {"host": "127.0.0.1", "port": ircd.port, "tls": False}},
        "throttle_rate": 0.5, "throttle_burst": 1}, outbox={"retry_initial": 1.0, "retry_max": 4.0})
    user = prosody.register(f"ircpm{os.getpid()}", "pw")
    nick = user.partition("@")[0]
    peer_jid = "pmpeer%localhost@ircslow.localhost"
    expected = ["pm 0", "pm 1", "pm 2a", "pm 2b", "pm 2c", "pm 3", "pm 4"]

    def received(*peers) -> list[str]:
        return [l.split(" PRIVMSG pmpeer :", 1)[1] for p in peers for l in p.seen
                if l.startswith(f":{nick}!") and " PRIVMSG pmpeer :" in l]

    async def scenario():
        peer = await RawIRC(ircd.port, "pmpeer").connect()
        client = await Client(user, "pw").start(prosody.c2s_port)
        again = None
        try:
            client.send_chat(peer_jid, "pm 0")              # opens the connection; the one token of the burst
            await peer.expect(lambda l: l.endswith("PRIVMSG pmpeer :pm 0"), timeout=20)
            for text in ("pm 1", "pm 2a\npm 2b\npm 2c", "pm 3", "pm 4"):
                client.send_chat(peer_jid, text)
            # one line every 2 s: pm 2a written, pm 2b ... pm 4 still waiting in the gateway
            await peer.expect(lambda l: l.endswith("PRIVMSG pmpeer :pm 2a"), timeout=20)
            await asyncio.to_thread(ircd.restart)
            again = await RawIRC(ircd.port, "pmpeer").connect()
            for _ in range(160):
                if len(received(peer, again)) >= len(expected):
                    break
                await asyncio.sleep(0.25)
            await asyncio.sleep(3.0)                         # nothing more comes: no line twice
            assert received(peer, again) == expected
        finally:
            await client.stop()
            await peer.close()
            if again is not None:
                await again.close()

    try:
        run(scenario(), timeout=90)
    finally:
        gateway.stop()
