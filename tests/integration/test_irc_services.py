"""
IRC with real IRCv3 peers: InspIRCd 3 (cap, sasl, message-tags, msgid, server-time)
linked to atheme-services (NickServ, SaslServ), a real Prosody with slixmpp users,
and the gateway process between them. Two networks: ``services.test`` offers SASL,
``nosasl.test`` (an InspIRCd without m_sasl, its own atheme) only NickServ.
"""

import asyncio
import calendar
import os
import re

import pytest

from gateway.testing.atheme import Atheme
from gateway.testing.inspircd import InspIRCd
from tests.integration.gateway_fixture import start_gateway
from tests.integration.harness import Client, body, run
from tests.integration.irc_support import RawIRC

DOMAIN = "irc.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
PID = os.getpid() % 100000


class Network:
    def __init__(self, ircd: InspIRCd, services: Atheme):
        self.ircd, self.services = ircd, services
        self.port = ircd.port


def _network(workdir, name, sasl):
    ircd = InspIRCd(os.path.join(workdir, name, "inspircd"), sasl=sasl).start()
    try:
        services = Atheme(os.path.join(workdir, name, "atheme"), ircd).start()
    except Exception:
        ircd.stop()
        raise
    return Network(ircd, services)


@pytest.fixture(scope="module")
def sasl_net(workdir):
    net = _network(workdir, "sasl-net", sasl=True)
    yield net
    net.services.stop()
    net.ircd.stop()


@pytest.fixture(scope="module")
def plain_net(workdir):
    net = _network(workdir, "plain-net", sasl=False)
    yield net
    net.services.stop()
    net.ircd.stop()


@pytest.fixture(scope="module")
def services_gateway(prosody, sasl_net, plain_net, workdir):
    path = os.path.join(workdir, "irc-services-gw")
    os.makedirs(path, exist_ok=True)
    gateway = start_gateway(prosody, path, "irc", adapter="irc", options={
        "servers": {"services.test": {"host": "127.0.0.1", "port": sasl_net.port, "tls": False},
                    "nosasl.test": {"host": "127.0.0.1", "port": plain_net.port, "tls": False}},
        "throttle_rate": 0.0, "allowed_servers": ["services.test", "nosasl.test"]})
    yield gateway
    gateway.stop()


class CapIRC(RawIRC):
    """A raw client that negotiates IRCv3 capabilities before registering."""

    def __init__(self, port: int, nick: str, caps: str = "message-tags server-time echo-message"):
        super().__init__(port, nick)
        self.caps = caps

    async def connect(self) -> "CapIRC":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.send("CAP LS 302", f"CAP REQ :{self.caps}", f"NICK {self.nick}", f"USER {self.nick} 0 * :{self.nick}")
        self._task = asyncio.ensure_future(self._read())
        await self.expect(lambda l: " CAP * ACK " in l)
        self.send("CAP END")
        await self.expect(lambda l: f" 001 {self.nick} " in l)
        return self


async def register_account(port: int, account: str, password: str) -> None:
    """A NickServ account, registered the way a person does it: REGISTER from a client named like it."""
    reg = await RawIRC(port, account).connect()
    try:
        reg.send(f"PRIVMSG NickServ :REGISTER {password} {account}@example.org")
        await reg.expect(lambda l: f" 900 {account} " in l, timeout=15)
        await reg.expect(lambda l: "is now registered" in l, timeout=15)
    finally:
        await reg.close()


async def configure(client: Client, server: str, fields: dict) -> None:
    """The XEP-0050 ``configure`` command on the server's JID, submitted with ``fields``."""
    server_jid = f"{server}@{DOMAIN}"
    first = await client.plugin["xep_0050"].send_command(server_jid, "configure", timeout=15)
    done = client.Iq(stype="set", sto=server_jid)
    done["command"]["node"] = "configure"
    done["command"]["sessionid"] = first["command"]["sessionid"]
    done["command"]["action"] = "complete"
    form = done["command"]["form"]
    form["type"] = "submit"
    for var, value in fields.items():
        form.add_field(var, value=value)
    completed = await done.send(timeout=15)
    assert completed["command"]["status"] == "completed"


def statuses(p) -> set[int]:
    return {int(s.get("code")) for s in p.findall(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}status")}


async def join(client: Client, room: str, nick: str):
    client.send_raw(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'/></presence>")
    return await client.next_presence(
        lambda p: p.get("from", "").startswith(room + "/") and (110 in statuses(p) or p.get("type") == "error"),
        timeout=30)


async def whois_account(watcher: RawIRC, nick: str, timeout: float = 20.0) -> str | None:
    """WHOIS ``nick`` until InspIRCd's 330 (RPL_WHOISACCOUNT) names an account; None if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        watcher.send(f"WHOIS {nick}")
        account = None
        while True:
            line = await watcher.expect(lambda l: re.search(rf" (330|318) {watcher.nick} {re.escape(nick)} ", l,
                                                            re.IGNORECASE), timeout=10)
            if " 330 " in line:
                account = line.split(" ")[4]
            else:
                break
        if account:
            return account
        await asyncio.sleep(0.2)
    return None


def test_sasl_plain_against_inspircd_and_atheme(prosody, sasl_net, services_gateway):
    user = prosody.register(f"svcsasl{PID}", "pw")
    account, password, nick = f"acct{PID}", "real-s3cret-sasl", f"gw{PID}"

    async def scenario():
        await register_account(sasl_net.port, account, password)
        watcher = await RawIRC(sasl_net.port, f"watch{PID}").connect()
        watcher.send("JOIN #sasl")
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            await configure(client, "services.test", {"sasl_username": account, "sasl_password": password})
            joined = await join(client, f"#sasl%services.test@{DOMAIN}", nick)
            assert joined.get("type") != "error", joined
            await watcher.expect(lambda l: f":{nick}!" in l and " JOIN " in l, timeout=20)
            assert await whois_account(watcher, nick) == account
        finally:
            await client.stop()
            await watcher.close()

    run(scenario(), timeout=60)
    assert password not in services_gateway.log()
    assert "SASL on services.test: ok" in services_gateway.log()


def test_wrong_sasl_password_is_a_join_error_and_nickserv_gets_nothing(prosody, sasl_net, services_gateway):
    user = prosody.register(f"svcbad{PID}", "pw")
    account, nick = f"bad{PID}", f"gwbad{PID}"

    async def scenario():
        await register_account(sasl_net.port, account, "the-right-one")
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            await configure(client, "services.test", {"sasl_username": account, "sasl_password": "the-wrong-one"})
            err = await join(client, f"#bad%services.test@{DOMAIN}", nick)
            assert err.get("type") == "error"
            assert err.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}not-authorized") is not None
            text = "".join(err.itertext())
            assert "SASL authentication failed" in text and "the-wrong-one" not in text   # the server's 904 text
        finally:
            await client.stop()

    run(scenario(), timeout=60)
    assert "the-wrong-one" not in services_gateway.log()
    # services log every command they get (the NickServ fallback test shows an IDENTIFY lands there)
    assert not [l for l in sasl_net.services.commands().splitlines() if nick.lower() in l.lower()]


def test_nickserv_identify_when_the_server_offers_no_sasl(prosody, plain_net, services_gateway):
    user = prosody.register(f"svcns{PID}", "pw")
    account, password, nick = f"ns{PID}", "ns-s3cret-pw", f"gwns{PID}"

    async def scenario():
        await register_account(plain_net.port, account, password)
        watcher = await RawIRC(plain_net.port, f"nswatch{PID}").connect()
        watcher.send("JOIN #ns")
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            await configure(client, "nosasl.test",
                            {"after_connect": [f"PRIVMSG NickServ :IDENTIFY {account} {password}"]})
            joined = await join(client, f"#ns%nosasl.test@{DOMAIN}", nick)
            assert joined.get("type") != "error", joined
            await watcher.expect(lambda l: f":{nick}!" in l and " JOIN " in l, timeout=20)
            assert await whois_account(watcher, nick) == account
        finally:
            await client.stop()
            await watcher.close()

    run(scenario(), timeout=60)
    assert password not in services_gateway.log()
    assert [l for l in plain_net.services.commands().splitlines() if nick.lower() in l.lower() and "IDENTIFY" in l]


def _stamp(value: str) -> float:
    whole, _, fraction = value.rstrip("Z").partition(".")
    return calendar.timegm(tuple(int(x) for x in re.split(r"[-T:]", whole)) + (0, 0, 0)) + float(f"0.{fraction or 0}")


def test_msgid_and_server_time_from_inspircd_become_stanza_id_and_delay(prosody, sasl_net, services_gateway):
    user = prosody.register(f"svctags{PID}", "pw")
    nick = f"gwtag{PID}"

    async def scenario():
        speaker = await CapIRC(sasl_net.port, f"spk{PID}").connect()
        speaker.send("JOIN #tags")
        await speaker.expect(lambda l: " 366 " in l)
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            room = f"#tags%services.test@{DOMAIN}"
            joined = await join(client, room, nick)
            assert joined.get("type") != "error", joined
            speaker.send("PRIVMSG #tags :tagged by inspircd")
            echo = await speaker.expect(lambda l: "inspircd.org/echo" in l and "tagged by inspircd" in l)
            tags = dict(t.partition("=")[::2] for t in echo[1:].split(" ", 1)[0].split(";"))
            assert re.fullmatch(r"001~\d+~\d+", tags["msgid"]) and tags["time"]
            m = await client.next_message(lambda m: body(m) == "tagged by inspircd", timeout=20)
            sid = m.find("{urn:xmpp:sid:0}stanza-id")
            assert sid is not None and sid.get("id") == tags["msgid"] and sid.get("by") == room
            delay = m.find("{urn:xmpp:delay}delay")
            assert delay is not None and abs(_stamp(delay.get("stamp")) - _stamp(tags["time"])) < 0.002
            # a private message carries the server's time too
            speaker.send(f"PRIVMSG {nick} :privately tagged")
            pm = await client.next_message(lambda m: body(m) == "privately tagged", timeout=20)
            assert pm.get("from") == f"spk{PID}%services.test@{DOMAIN}"
            assert pm.find("{urn:xmpp:delay}delay") is not None
        finally:
            await client.stop()
            await speaker.close()

    run(scenario(), timeout=60)
