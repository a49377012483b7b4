"""
IRC features biboumi users rely on (issue 13), end to end: a real ngircd with a raw
IRC client, a real Prosody with slixmpp users, the gateway process between them.
"""

import os

import pytest

from tests.integration.gateway_fixture import start_gateway
from tests.integration.harness import Client, error_condition, run
from tests.integration.irc_support import RawIRC, irc_server_fixture, start_irc_gateway

DOMAIN = "parity.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
PING = "<ping xmlns='urn:xmpp:ping'/>"
NS_TRAFFIC = "http://jabber.org/protocol/muc#traffic"


ircd = irc_server_fixture("ngircd", "parity")


# For what ngircd refuses: channel names with ':' (RFC 2812 keeps it for masks; InspIRCd allows it).
inspircd = irc_server_fixture("inspircd", "parity")


@pytest.fixture(scope="module")
def gateway(prosody, ircd, inspircd, workdir):
    gw = start_irc_gateway(prosody, workdir, "parity", **{"localhost": ircd, "insp.test": inspircd})
    yield gw
    gw.stop()


def room(channel: str, server: str = "localhost") -> str:
    return f"{channel}%{server}@{DOMAIN}"


def codes(p) -> set[int]:
    return {int(s.get("code")) for s in p.findall(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}status")}


async def join(client: Client, channel: str, nick: str, server: str = "localhost"):
    jid = room(channel, server)
    client.send_raw(f"<presence to='{jid}/{nick}'><x xmlns='{NS_MUC}'/></presence>")
    return await client.next_presence(lambda p: p.get("from") == f"{jid}/{nick}" and 110 in codes(p), timeout=30)


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


def test_room_disco_names_traffic_and_a_channel_named_with_at_and_colon(prosody, inspircd, gateway):
    """A readable room name, the muc#traffic node, and '#a@b:c' joined through XEP-0106 escaping."""
    user = prosody.register(f"odd{os.getpid()}", "pw")
    odd = "#a\\40b\\3ac"                 # XEP-0106 for #a@b:c

    async def scenario():
        carol = await RawIRC(inspircd.port, "oddcarol").connect()
        carol.send("JOIN #a@b:c")
        await carol.expect(lambda l: " JOIN " in l and "#a@b:c" in l, timeout=20)
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            own = await join(alice, odd, "oddalice", "insp.test")
            assert own.get("type") is None
            await carol.expect(lambda l: l.startswith(":oddalice!") and " JOIN " in l and "#a@b:c" in l, timeout=20)
            alice.send_chat(room(odd, "insp.test"), "hello odd", mtype="groupchat")
            await carol.expect(lambda l: l.endswith("PRIVMSG #a@b:c :hello odd"), timeout=20)
            carol.send("PRIVMSG #a@b:c :back at you")
            got = await alice.next_message(lambda m: m.findtext("{jabber:client}body") == "back at you", timeout=20)
            assert got.get("from") == f"{room(odd, 'insp.test')}/oddcarol"

            info = await alice.iq(room(odd, "insp.test"), "get", "<query xmlns='http://jabber.org/protocol/disco#info'/>")
            identity = info.find("{http://jabber.org/protocol/disco#info}query/"
                                 "{http://jabber.org/protocol/disco#info}identity")
            assert identity.get("name") == "#a@b:c on insp.test" and identity.get("type") == "irc"
            traffic = await alice.iq(room(odd, "insp.test"), "get",
                                     f"<query xmlns='http://jabber.org/protocol/disco#info' node='{NS_TRAFFIC}'/>")
            query = traffic.find("{http://jabber.org/protocol/disco#info}query")
            assert traffic.get("type") == "result" and query.get("node") == NS_TRAFFIC and len(query) == 0
        finally:
            await alice.stop()
            await carol.close()

    run(scenario(), 90)


def test_raw_commands_to_the_server_jid_and_its_replies(prosody, ircd, gateway):
    """biboumi's raw IRC: a message to the server's JID is sent as commands; the server answers from that JID."""
    user = prosody.register(f"raw{os.getpid()}", "pw")
    server_jid = f"localhost@{DOMAIN}"

    async def scenario():
        bob = await RawIRC(ircd.port, "rawbob").connect()
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            alice.send_chat(server_jid, "WHOIS rawbob")
            # The replies, not the welcome burst of the connection the command opened, as one message.
            reply = await alice.next_message(lambda m: m.get("from") == server_jid, timeout=30)
            lines = reply.findtext("{jabber:client}body").splitlines()
            assert lines[0].startswith("311 rawbob ~rawbob ") and lines[-1].startswith("318 rawbob"), lines
            alice.send_chat(server_jid, "PRIVMSG rawbob :typed by hand")
            await bob.expect(lambda l: l.endswith("PRIVMSG rawbob :typed by hand"), timeout=20)
            # An unknown command: the server's own answer (421) comes back.
            alice.send_chat(server_jid, "FROBNICATE now")
            await alice.next_message(lambda m: m.get("from") == server_jid
                                     and m.findtext("{jabber:client}body").startswith("421 "), timeout=20)
            alice.send_chat(server_jid, "\n".join(f"PRIVMSG rawbob :{i}" for i in range(9)))
            error = await alice.next_message(lambda m: m.get("type") == "error" and m.get("from") == server_jid,
                                             timeout=20)
            assert error_condition(error) == ("policy-violation", "at most 8 commands in one message")
            alice.send_chat(server_jid, "PRIVMSG rawbob :sentinel")
            await bob.expect(lambda l: l.endswith("PRIVMSG rawbob :sentinel"), timeout=20)
            assert not [l for l in bob.seen if l.endswith("PRIVMSG rawbob :0")]     # none of the nine went
        finally:
            await alice.stop()
            await bob.close()

    run(scenario(), 90)


def test_subscriptions_to_the_gateway_and_server_jids_show_the_connection(prosody, ircd, gateway):
    """As in biboumi: both subscriptions are accepted, and the server's JID is online while connected."""
    user = prosody.register(f"sub{os.getpid()}", "pw")
    server_jid = f"localhost@{DOMAIN}"

    def status(p):
        return p.findtext("{jabber:client}status") or ""

    async def scenario():
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            alice.send_raw(f"<presence to='{DOMAIN}' type='subscribe'/>")
            await alice.next_presence(lambda p: p.get("from") == DOMAIN and p.get("type") == "subscribed", timeout=20)
            alice.send_raw(f"<presence to='{server_jid}' type='subscribe'/>")
            await alice.next_presence(lambda p: p.get("from") == server_jid and p.get("type") == "subscribed",
                                      timeout=20)
            down = await alice.next_presence(lambda p: p.get("from") == server_jid and p.get("type") is not None
                                             and p.get("type") != "subscribed", timeout=20)
            assert down.get("type") == "unavailable" and status(down) == "not connected to localhost"
            # Joining connects: the server's JID comes online (signed on, before the channel's JOIN).
            alice.send_raw(f"<presence to='{room('#subs')}/subalice'><x xmlns='{NS_MUC}'/></presence>")
            up = await alice.next_presence(lambda p: p.get("from") == server_jid and p.get("type") is None,
                                           timeout=20)
            assert status(up) == "connected to localhost as subalice"
            await alice.next_presence(lambda p: p.get("from") == f"{room('#subs')}/subalice" and 110 in codes(p),
                                      timeout=20)
            alice.send_raw(f"<presence to='{room('#subs')}/subalice' type='unavailable'/>")
            gone = await alice.next_presence(lambda p: p.get("from") == server_jid
                                             and p.get("type") == "unavailable", timeout=20)
            assert status(gone).startswith("disconnected from localhost")
        finally:
            await alice.stop()

    run(scenario(), 90)


NS_COMMANDS = "http://jabber.org/protocol/commands"


async def command(client: Client, to: str, node: str, fields: dict | None = None):
    """Run an ad-hoc command: execute, and complete its form with ``fields``; the last <command/>."""
    reply = await client.iq(to, "set", f"<command xmlns='{NS_COMMANDS}' node='{node}' action='execute'/>")
    cmd = reply.find(f"{{{NS_COMMANDS}}}command")
    if cmd.get("status") == "completed":
        return cmd
    values = "".join(f"<field var='{k}'>" + "".join(f"<value>{v}</value>" for v in (vs if isinstance(vs, list)
                     else [vs])) + "</field>" for k, vs in (fields or {}).items())
    reply = await client.iq(to, "set", f"<command xmlns='{NS_COMMANDS}' node='{node}' sessionid='{cmd.get('sessionid')}'"
                                       f" action='complete'><x xmlns='jabber:x:data' type='submit'>{values}</x>"
                                       "</command>")
    return reply.find(f"{{{NS_COMMANDS}}}command")


def note(cmd) -> str:
    return cmd.findtext(f"{{{NS_COMMANDS}}}note") or ""


def test_ad_hoc_commands_of_the_gateway_and_server_jids(prosody, ircd, gateway):
    """biboumi's commands: hello, ping, connection info, disconnecting; admin ones refused to users."""
    user = prosody.register(f"cmd{os.getpid()}", "pw")
    server_jid = f"localhost@{DOMAIN}"

    async def scenario():
        watcher = await RawIRC(ircd.port, "cmdwatch").connect()
        watcher.send("JOIN #cmds")
        await watcher.expect(lambda l: " JOIN " in l and "#cmds" in l)
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            items = await alice.iq(DOMAIN, "get", f"<query xmlns='http://jabber.org/protocol/disco#items' "
                                                  f"node='{NS_COMMANDS}'/>")
            nodes = {i.get("node") for i in items.iter("{http://jabber.org/protocol/disco#items}item")}
            assert {"hello", "ping", "configure", "disconnect-from-irc-servers"} <= nodes
            assert not {"disconnect-user", "reload"} & nodes            # admins' only
            assert note(await command(alice, DOMAIN, "hello", {"name": "Alice"})) == "Hello Alice!"
            assert note(await command(alice, DOMAIN, "ping")) == "Pong"
            for admin_only in ("disconnect-user", "reload"):
                condition, _ = await alice.iq_error(DOMAIN, "set", f"<command xmlns='{NS_COMMANDS}' "
                                                                   f"node='{admin_only}' action='execute'/>")
                assert condition == "forbidden"

            assert note(await command(alice, server_jid, "get-irc-connection-info")) == \
                "You are not connected to localhost."
            await join(alice, "#cmds", "cmdalice")
            info = note(await command(alice, server_jid, "get-irc-connection-info"))
            assert info.startswith("localhost: connected since ") and "as cmdalice" in info \
                and f"port {ircd.port} without TLS" in info

            done = await command(alice, DOMAIN, "disconnect-from-irc-servers",
                                 {"servers": ["localhost"], "reason": "off for lunch"})
            assert note(done) == "1 connection(s) closed."
            out = await alice.next_presence(lambda p: p.get("from") == f"{room('#cmds')}/cmdalice"
                                            and p.get("type") == "unavailable", timeout=20)
            assert 110 in codes(out)
            await watcher.expect(lambda l: l.startswith(":cmdalice!") and " QUIT " in l and "off for lunch" in l)
        finally:
            await alice.stop()
            await watcher.close()

    run(scenario(), 90)


def test_admins_disconnect_a_user_and_reload(prosody, ircd, workdir):
    """The admins' commands, on a gateway of its own (started with `run`, so reload has its hook)."""
    user = prosody.register(f"victim{os.getpid()}", "pw")
    admin = prosody.register(f"boss{os.getpid()}", "pw")
    path = os.path.join(workdir, "parity-admin")
    os.makedirs(path, exist_ok=True)
    gw = start_gateway(prosody, path, "parityadmin", adapter="irc", admins=[admin], options={
        "servers": {"localhost": {"host": "127.0.0.1", "port": ircd.port, "tls": False}},
        "throttle_rate": 0.0, "allowed_servers": ["localhost"]})
    domain = gw.domain

    async def scenario():
        watcher = await RawIRC(ircd.port, "adminwatch").connect()
        watcher.send("JOIN #admins")
        await watcher.expect(lambda l: " JOIN " in l and "#admins" in l)
        victim = await Client(user, "pw").start(prosody.c2s_port)
        boss = await Client(admin, "pw").start(prosody.c2s_port)
        try:
            victim.send_raw(f"<presence to='#admins%localhost@{domain}/victim'><x xmlns='{NS_MUC}'/></presence>")
            await watcher.expect(lambda l: l.startswith(":victim!") and " JOIN " in l)
            done = await command(boss, domain, "disconnect-user", {"jid": user, "reason": "maintenance"})
            assert note(done) == f"{user}: 1 connection(s) closed."
            await watcher.expect(lambda l: l.startswith(":victim!") and " QUIT " in l and "maintenance" in l)
            assert note(await command(boss, domain, "reload")).startswith("Configuration reloaded")
        finally:
            await victim.stop()
            await boss.stop()
            await watcher.close()

    try:
        run(scenario(), 90)
        gw.wait_log("config reloaded", timeout=10)
    finally:
        gw.stop()


NS_OWNER = "http://jabber.org/protocol/muc#owner"


def form_values(x) -> dict:
    return {f.get("var"): [v.text for v in f.findall("{jabber:x:data}value")] for f in x.findall("{jabber:x:data}field")}


def test_channel_settings_by_command_and_muc_owner_encoding_and_persistence(prosody, ircd, gateway):
    """A channel's own settings (biboumi's channel `configure`): encoding and persistence really apply."""
    user = prosody.register(f"chset{os.getpid()}", "pw")
    chan = room("#latin")

    async def scenario():
        carol = await RawIRC(ircd.port, "latincarol").connect()
        carol.send("JOIN #latin")
        await carol.expect(lambda l: " JOIN " in l and "#latin" in l)
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            await join(alice, "#latin", "chalice")
            done = await command(alice, chan, "configure", {"encoding": "cp1252", "persistent": "true"})
            assert note(done) == "Settings for #latin%localhost saved."
            # A line in cp1252 (not UTF-8): the euro sign and é decoded with the channel's encoding.
            carol.writer.write("PRIVMSG #latin :caf\xe9 \x80 5".encode("latin-1") + b"\r\n")
            got = await alice.next_message(lambda m: m.get("type") == "groupchat" and
                                           (m.findtext("{jabber:client}body") or "").startswith("caf"), timeout=20)
            assert got.findtext("{jabber:client}body") == "café € 5"

            # muc#owner shows the same settings and changes them.
            owner = await alice.iq(chan, "get", f"<query xmlns='{NS_OWNER}'/>")
            x = owner.find(f"{{{NS_OWNER}}}query/{{jabber:x:data}}x")
            values = form_values(x)
            assert values["encoding"] == ["cp1252"] and values["persistent"] in (["1"], ["true"])
            await alice.iq(chan, "set", f"<query xmlns='{NS_OWNER}'><x xmlns='jabber:x:data' type='submit'>"
                                        "<field var='max_history'><value>50</value></field></x></query>")
            values = form_values((await alice.iq(chan, "get", f"<query xmlns='{NS_OWNER}'/>"))
                                 .find(f"{{{NS_OWNER}}}query/{{jabber:x:data}}x"))
            assert values["max_history"] == ["50"]
            condition, _ = await alice.iq_error(chan, "set", f"<query xmlns='{NS_OWNER}'><x xmlns='jabber:x:data' "
                                                             "type='submit'><field var='encoding'><value>klingon"
                                                             "</value></field></x></query>")
            assert condition == "bad-request"

            # Persistent: leaving from XMPP keeps the nick in the channel (no PART), and coming back is instant.
            alice.send_raw(f"<presence to='{chan}/chalice' type='unavailable'/>")
            await alice.next_presence(lambda p: p.get("from") == f"{chan}/chalice" and p.get("type") == "unavailable",
                                      timeout=20)
            carol.send("NAMES #latin")
            await carol.expect(lambda l: " 353 " in l and "#latin" in l and "chalice" in l.split(":")[-1].split())
            assert not [l for l in carol.seen if l.startswith(":chalice!") and " PART " in l]
            await join(alice, "#latin", "chalice")
        finally:
            await alice.stop()
            await carol.close()

    run(scenario(), 90)


def test_a_message_split_into_irc_lines_is_said_once_in_the_room(prosody, ircd, gateway):
    user = prosody.register(f"split{os.getpid()}", "pw")
    chan = room("#splits")

    async def scenario():
        dave = await RawIRC(ircd.port, "splitdave").connect()
        dave.send("JOIN #splits")
        await dave.expect(lambda l: " JOIN " in l and "#splits" in l)
        alice = await Client(user, "pw").start(prosody.c2s_port)
        try:
            await join(alice, "#splits", "splitter")
            alice.send_chat(chan, "first line\nsecond line", mtype="groupchat")
            told = await alice.next_message(lambda m: m.get("from") == chan and m.get("type") == "groupchat"
                                            and (m.findtext("{jabber:client}body") or "").startswith("Your message"))
            assert told.findtext("{jabber:client}body").startswith("Your message was sent as 2 IRC lines: ")
            await dave.expect(lambda l: l.endswith("PRIVMSG #splits :second line"))
            alice.send_chat(chan, "third\nfourth", mtype="groupchat")
            await dave.expect(lambda l: l.endswith("PRIVMSG #splits :fourth"))
            assert not await alice.quiet("messages", 1.0, lambda m: m.get("from") == chan)
        finally:
            await alice.stop()
            await dave.close()

    run(scenario(), 90)
