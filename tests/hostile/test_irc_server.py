"""
A hostile IRC server against the real gateway process: the test is the server
(no real IRC daemon misbehaves on purpose), a real Prosody and slixmpp users
are on the other side.

Every case checks the same three things: the user on the hostile server gets a
clear outcome (the join completes, is cut with a notice, or fails with a
readable error), the component stream stays up (another user on another IRC
network of the same gateway still gets a message through), and the gateway's
resident memory stays under a bound the case states.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import pytest

from gateway.testing.process import free_port
from tests.hostile.conftest import rss_kib, start_gateway
from tests.integration.harness import Client, body, run
from tests.integration.irc_support import ScriptedSASLServer

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_ITEMS = "http://jabber.org/protocol/disco#items"

#: The bounds the module's gateway is configured with (small, so the user's
#: client is not the slow part of the test).
MAX_NAMES = 300
MAX_LIST = 200
REGISTRATION_TIMEOUT = 4.0
#: How much the gateway's RSS may grow in one case, over the baseline measured
#: once the gateway has served one user.
RSS_GROWTH_KIB = 60 * 1024

_users = iter(range(1, 1000))


def user_name(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_users)}"


def error_of(stanza) -> tuple[str | None, str]:
    err = stanza.find("{jabber:client}error")
    if err is None:
        return None, ""
    condition = next((c.tag.split("}")[1] for c in err if c.tag.startswith(f"{{{NS_STANZAS}}}")
                      and not c.tag.endswith("}text")), None)
    return condition, "".join(t.text or "" for t in err.findall(f"{{{NS_STANZAS}}}text"))


def statuses(p) -> set[int]:
    return {int(s.get("code")) for s in p.findall(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}status")}


class HostileIRC:
    """
    An IRC server that registers clients like a real one, then attacks: what it
    does after a JOIN depends on the channel's name (``attacks``), LIST is
    answered forever, and ``mode`` attacks every connection: ``"stall"`` never
    ends the CAP negotiation, ``"sasl-stall"`` ACKs ``sasl`` and never answers
    AUTHENTICATE, ``"motd"`` sends MOTD lines (372) forever after the welcome.
    """

    #: Each MOTD line's text: about 8 KB, under the line limit (8,703 bytes), so
    #: every one is parsed, and a client keeping them all holds ~8 KB a line.
    MOTD_TEXT = "- " + "m" * 8000
    #: MOTD lines sent before the line a ``#motd`` channel waits for (~96 MB).
    MOTD_LINES_BEFORE_MARK = 12_000

    def __init__(self, name: str, mode: str | None = None):
        self.name = name
        self.mode = mode
        #: The channel the MOTD flood marks with a message once it has sent MOTD_LINES_BEFORE_MARK.
        self.motd_channel: asyncio.Future | None = None
        self.motd_sent = 0
        self.attacks = {}
        self.connections = 0
        self.received: list[str] = []
        #: Set by an attack: the server stops reading what the gateway sends.
        self.deaf = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> "HostileIRC":
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        return self

    def listen_on(self, port: int) -> "HostileIRC":
        self.port = port
        return self

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        nick = "x"

        def send(line: str | bytes) -> None:
            writer.write((line.encode() if isinstance(line, str) else line) + b"\r\n")

        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    return
                if self.deaf.is_set():
                    await asyncio.Event().wait()          # never reads again
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.received.append(line)
                if line.startswith("CAP LS"):
                    if self.mode == "stall":
                        self._spawn(self._stall(writer))
                    elif self.mode == "sasl-stall":
                        send(f":{self.name} CAP * LS :server-time sasl=PLAIN")
                    else:
                        send(f":{self.name} CAP * LS :server-time message-tags")
                elif line.startswith("CAP REQ"):
                    send(f":{self.name} CAP * ACK :" + line.split(":", 1)[1])
                elif line.startswith("AUTHENTICATE"):
                    pass                                  # sasl-stall: never answered (nor by anyone else)
                elif line.startswith("NICK "):
                    nick = line.split(" ", 1)[1]
                elif line == "CAP END":
                    send(f":{self.name} 001 {nick} :Welcome")
                    if self.mode == "motd":
                        self._spawn(self._endless_motd(writer, send, nick))
                elif line.startswith("PING"):
                    send(f":{self.name} PONG {self.name} {line[5:]}")
                elif line.startswith("JOIN "):
                    channel = line.split(" ")[1]
                    attack = self.attacks.get(channel.lower())
                    send(f":{nick}!u@h JOIN {channel}")
                    if attack is not None:
                        self._spawn(attack(writer, send, nick, channel, self))
                elif line == "LIST":
                    self._spawn(self._endless_list(writer, send, nick))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _stall(self, writer) -> None:
        """``CAP LS`` continued forever ("more follows"), each line offering new capabilities."""
        n = 0
        while not writer.is_closing():
            caps = " ".join(f"cap{n}-{i}" for i in range(20))
            writer.write(f":{self.name} CAP * LS * :{caps}\r\n".encode())
            n += 1
            await writer.drain()
            await asyncio.sleep(0.01)

    async def _endless_motd(self, writer, send, nick) -> None:
        """
        MOTD lines (372, no 375 before them, no 376 ever) for as long as the
        connection lasts. Once MOTD_LINES_BEFORE_MARK are out and a channel was
        joined, one PRIVMSG there: when the user has it, the gateway has read
        every line before it (one TCP stream, in order).
        """
        marked = False
        while not writer.is_closing():
            for _ in range(50):
                send(f":{self.name} 372 {nick} :{self.MOTD_TEXT}")
            self.motd_sent += 50
            if (not marked and self.motd_sent >= self.MOTD_LINES_BEFORE_MARK
                    and self.motd_channel is not None and self.motd_channel.done()):
                send(f":op!o@h PRIVMSG {self.motd_channel.result()} :after {self.motd_sent} motd lines")
                marked = True
            await writer.drain()
            await asyncio.sleep(0)

    async def _endless_list(self, writer, send, nick) -> None:
        send(f":{self.name} 321 {nick} Channel :Users  Name")
        send(f":{self.name} 322 {nick} #bad\x01chan\x7f 3 :control\x00 characters")
        send(f":{self.name} 322 {nick} #\xe9t\xe9 3 :latin-1".encode("latin-1"))
        n = 0
        while not writer.is_closing():
            for _ in range(100):
                send(f":{self.name} 322 {nick} #chan{n} {n % 50} :topic of channel number {n} \x01\x02")
                n += 1
            await writer.drain()
            await asyncio.sleep(0.005)

    def close(self) -> None:
        self.server.close()
        for task in list(self.tasks):
            task.cancel()


# -- the attacks, by channel -----------------------------------------------------------

#: Occupant names with characters XML or a JID resource cannot hold (controls,
#: U+FFFE, NEL, a right-to-left letter before left-to-right ones), next to fine ones.
HOSTILE_NAMES = [b"@op", b"b\x01ell", b"n\x7fdel", b"t\tab", b"f\xef\xbf\xbee", "\u05d0mixed".encode(),
                 b"c\xc2\x85one", b"plain"]
#: In a line of their own, being no UTF-8 at all (an encoded surrogate, a stray byte):
#: read as latin-1 (the fallback charset), so NBSP and a C1 control appear.
NOT_UTF8_NAMES = [b"s\xed\xa0\x80x", b"l\xe9on\xff"]
#: The occupants the user must see: the names above as JID resources.
CLEANED_NAMES = {"op", "bell", "ndel", "tab", "fe", "mixed", "cone", "plain", "s\xedx", "l\xe9on\xff"}


async def attack_controls(writer, send, nick, channel, server=None) -> None:
    """Control characters and invalid UTF-8 in every field and tag, then one plain line."""
    c = channel.encode()
    send(b":hostile.test 332 " + nick.encode() + b" " + c + b" :topic\x01with\x00nul\x1b[31m and \xff")
    send(b":hostile.test 353 " + nick.encode() + b" = " + c + b" :" + nick.encode() + b" "
         + b" ".join(HOSTILE_NAMES))
    send(b":hostile.test 353 " + nick.encode() + b" = " + c + b" :" + b" ".join(NOT_UTF8_NAMES))
    send(b":hostile.test 366 " + nick.encode() + b" " + c + b" :End of NAMES \x01")
    lines = [
        b"@msgid=\x01bad<id>;time=2024-13-45T99:99:99Z :b\x01ell!u@h PRIVMSG " + c + b" :body\x00with\x07bell\x1b",
        b"@msgid=\xff\xfe;+draft/x=\\\x01 :op!o@h PRIVMSG " + c + b" :\x01ACTION waves\x07\x01",
        b":op!o@h PRIVMSG " + c + b" :\x01VERSION\x01",
        b":op!o@h NOTICE " + c + b" :notice\x02bold\x0f\x01 \xed\xa0\x80",
        b":n\x7fdel!u@h NICK :new\x01nick\xc2\x85",
        b":op!o@h MODE " + c + b" +o t\tab",
        b":op!o@h KICK " + c + b" s\xed\xa0\x80x :reason\x00\x01\xef\xbf\xbe",
        b":t\tab!u@h PART " + c + b" :part\x0b reason",
        b":x\x01y!u@h JOIN " + c,
        b":x\x01y!u@h QUIT :quit\x0c reason \xef\xbf\xbf",
        b":op!o@h TOPIC " + c + b" :new\x01topic\x7f",
        b":p\x01m!u@h PRIVMSG " + nick.encode() + b" :private\x01 \xff body",
        b":hostile.test NOTICE " + nick.encode() + b" :server \x01notice",
        b":hostile.test 404 " + nick.encode() + b" " + c + b" :Cannot send \x01\x00",
        b"@msgid=fine-1 :op!o@h PRIVMSG " + c + b" :last line",
    ]
    for line in lines:
        send(line)
    await writer.drain()


async def attack_endless_names(writer, send, nick, channel, server=None) -> None:
    """100,000 names, 50 to a line, and no end of NAMES."""
    n = 0
    while n < 100_000 and not writer.is_closing():
        names = " ".join(f"user{n + i}_{'x' * 20}" for i in range(50))
        send(f":hostile.test 353 {nick} = {channel} :{names}")
        n += 50
        if n % 5000 == 0:
            await writer.drain()
    await writer.drain()
    await asyncio.sleep(1)
    send(f":op!o@h PRIVMSG {channel} :still here")
    await writer.drain()


async def attack_no_newline(writer, send, nick, channel, server=None) -> None:
    """A complete join, then 10 MB without a newline, then one ordinary line."""
    send(f":hostile.test 353 {nick} = {channel} :{nick} op")
    send(f":hostile.test 366 {nick} {channel} :End of NAMES")
    await writer.drain()
    chunk = b"A" * 65536
    for _ in range(160):                                  # 10 MiB
        if writer.is_closing():
            return
        writer.write(chunk)
        await writer.drain()
    send(b"")                                             # ends the monster line
    send(f":op!o@h PRIVMSG {channel} :after the flood")
    await writer.drain()


async def attack_ping_flood(writer, send, nick, channel, server) -> None:
    """
    A complete join, then the server stops reading and floods PINGs (100 MiB
    of them): each would be answered with a PONG of the same size, which could
    only pile up in the gateway's send buffer.
    """
    send(f":hostile.test 353 {nick} = {channel} :{nick} op")
    send(f":hostile.test 366 {nick} {channel} :End of NAMES")
    await writer.drain()
    server.deaf.set()
    ping = f"PING :{'p' * 500}\r\n".encode() * 128            # 64 KiB
    sent = 0
    while sent < 100 * 1024 * 1024 and not writer.is_closing():
        writer.write(ping)
        sent += len(ping)
        try:
            await asyncio.wait_for(writer.drain(), 10)
        except asyncio.TimeoutError:
            break                               # the gateway stopped reading us: what it should do
    server.flooded = sent


async def attack_motd_channel(writer, send, nick, channel, server) -> None:
    """A complete join; the MOTD flood (mode ``motd``) then marks this channel once it has sent its lines."""
    send(f":hostile.test 353 {nick} = {channel} :{nick} op")
    send(f":hostile.test 366 {nick} {channel} :End of NAMES")
    await writer.drain()
    if not server.motd_channel.done():
        server.motd_channel.set_result(channel)


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ports():
    return {"hostile": free_port(), "stall": free_port(), "motd": free_port(), "saslstall": free_port(),
            "good": free_port()}


@pytest.fixture(scope="module")
def irc_gateway(hostile_prosody, ports, workdir):
    path = os.path.join(workdir, "hostile-irc")
    os.makedirs(path, exist_ok=True)
    servers = {name + ".test": {"host": "127.0.0.1", "port": port, "tls": False} for name, port in ports.items()}
    gateway = start_gateway(hostile_prosody, path, "hirc", adapter="irc", options={
        "servers": servers, "throttle_rate": 0.0,
        "max_names": MAX_NAMES, "max_list": MAX_LIST, "registration_timeout": REGISTRATION_TIMEOUT,
        "list_timeout": 20.0})
    gateway.bystander = hostile_prosody.register(user_name("hircok"), "pw")
    yield gateway
    gateway.stop()


def servers(ports):
    """The hostile servers and the good one, started inside the test's event loop."""
    hostile = HostileIRC("hostile.test").listen_on(ports["hostile"])
    hostile.attacks = {"#controls": attack_controls, "#names": attack_endless_names, "#flood": attack_no_newline,
                       "#pingflood": attack_ping_flood}
    stall = HostileIRC("stall.test", mode="stall").listen_on(ports["stall"])
    motd = HostileIRC("motd.test", mode="motd").listen_on(ports["motd"])
    motd.attacks = {"#motd": attack_motd_channel}
    motd.motd_channel = asyncio.get_running_loop().create_future()
    saslstall = HostileIRC("saslstall.test", mode="sasl-stall").listen_on(ports["saslstall"])
    good = ScriptedSASLServer(ports["good"], account=None,
                              after_join=(":op!o@h PRIVMSG {channel} :canary",))
    return {"hostile": hostile, "stall": stall, "motd": motd, "saslstall": saslstall, "good": good}


async def canary(prosody, gateway, channel: str) -> None:
    """Another user, on another IRC network of the same gateway, still gets a message through."""
    other = await Client(gateway.bystander, "pw").start(prosody.c2s_port)
    try:
        room = f"{channel}%good.test@{gateway.domain}"
        other.send_raw(f"<presence to='{room}/bystander'><x xmlns='{NS_MUC}'/></presence>")
        m = await other.next_message(lambda m: body(m) == "canary", timeout=20)
        assert m.get("from") == f"{room}/op"
        other.send_raw(f"<presence type='unavailable' to='{room}/bystander'/>")
    finally:
        await other.stop()


@pytest.fixture(scope="module")
def baseline(hostile_prosody, irc_gateway, ports):
    """The gateway's RSS once it has served one user on the good network."""
    async def warm():
        good = servers(ports)["good"]
        await good.start()
        try:
            await canary(hostile_prosody, irc_gateway, "#warm")
        finally:
            good.close()

    run(warm(), timeout=60)
    return rss_kib(irc_gateway.proc.pid)


def scenario(prosody, gateway, ports, attack, channel: str):
    """
    Run ``attack(client, hostile, peers)`` for a new user (``peers``: every
    server of ``servers`` by name), then the canary; RSS checked after both.
    """
    user = prosody.register(user_name("hirc"), "pw")

    async def body_():
        peers = servers(ports)
        for server in peers.values():
            await server.start()
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            await attack(client, peers["hostile"], peers)
            await canary(prosody, gateway, channel)
        finally:
            await client.stop()
            for server in peers.values():
                server.close()

    run(body_(), timeout=120)
    assert gateway.proc.poll() is None, "the gateway process died"


def check_rss(gateway, baseline: int) -> None:
    grown = rss_kib(gateway.proc.pid) - baseline
    assert grown < RSS_GROWTH_KIB, f"RSS grew by {grown} KiB (bound {RSS_GROWTH_KIB} KiB)"


# -- cases -------------------------------------------------------------------------------


def test_control_characters_and_invalid_utf8_in_every_field(hostile_prosody, irc_gateway, ports, baseline):
    """
    Every occupant of NAMES arrives as a presence (a name no JID could hold is
    cleaned, not bounced by the XMPP server), every text arrives without the
    characters XML forbids, and the last plain line still comes through.
    """
    domain = irc_gateway.domain
    room = f"#controls%hostile.test@{domain}"

    async def attack(client, hostile, peers):
        client.send_raw(f"<presence to='{room}/me'><x xmlns='{NS_MUC}'/></presence>")
        occupants = set()
        while True:
            p = await client.next_presence(lambda p: p.get("from", "").startswith(room + "/"), timeout=20)
            if 110 in statuses(p):
                break
            occupants.add(p.get("from").split("/", 1)[1])
        # Each name cleaned to what a JID resource can hold; nothing bounced, nothing split in two.
        assert occupants == CLEANED_NAMES, occupants
        subject = await client.next_message(lambda m: m.find("{jabber:client}subject") is not None)
        assert subject.find("{jabber:client}subject").text.startswith("topicwithnul")
        last = await client.next_message(lambda m: body(m) == "last line", timeout=20)
        assert last.get("type") == "groupchat"
        private = await client.next_message(lambda m: (body(m) or "").startswith("private"), timeout=20)
        assert private.get("type") == "chat" and private.get("from") == f"pm%hostile.test@{domain}"
        info = await client.plugin["xep_0030"].get_info(jid=domain, timeout=10)
        assert info["disco_info"]["identities"]

    scenario(hostile_prosody, irc_gateway, ports, attack, "#after-controls")
    check_rss(irc_gateway, baseline)


def test_names_without_end_are_cut_and_the_join_completes(hostile_prosody, irc_gateway, ports, baseline):
    """100,000 names and no end of NAMES: the join completes with the first names and a notice says the list was cut."""
    room = f"#names%hostile.test@{irc_gateway.domain}"

    async def attack(client, hostile, peers):
        client.send_raw(f"<presence to='{room}/me'><x xmlns='{NS_MUC}'/></presence>")
        occupants = 0
        while True:
            p = await client.next_presence(lambda p: p.get("from", "").startswith(room + "/"), timeout=30)
            if 110 in statuses(p):
                break
            occupants += 1
        assert 0 < occupants <= MAX_NAMES
        notice = await client.next_message(lambda m: "cut" in (body(m) or ""), timeout=20)
        assert notice.get("from") == room and str(MAX_NAMES) in body(notice)
        await client.next_message(lambda m: body(m) == "still here", timeout=30)

    scenario(hostile_prosody, irc_gateway, ports, attack, "#after-names")
    check_rss(irc_gateway, baseline)


def test_endless_list_is_answered_cut(hostile_prosody, irc_gateway, ports, baseline):
    """
    LIST that never ends: the room list is answered with at most ``max_list``
    rooms, says it was cut, and no control character reaches the answer.
    """
    server_jid = f"hostile.test@{irc_gateway.domain}"

    async def attack(client, hostile, peers):
        items = await client.iq(server_jid, "get", f"<query xmlns='{NS_ITEMS}'/>")
        found = items.findall(f"{{{NS_ITEMS}}}query/{{{NS_ITEMS}}}item")
        rooms = [i for i in found if i.get("jid") != server_jid]
        assert 0 < len(rooms) <= MAX_LIST
        cut = [i for i in found if i.get("jid") == server_jid]
        assert cut and "cut" in cut[0].get("name") and str(MAX_LIST) in cut[0].get("name")
        for item in found:
            assert not re.search(r"[\x00-\x1f\x7f]", item.get("jid") + (item.get("name") or ""))

    scenario(hostile_prosody, irc_gateway, ports, attack, "#after-list")
    check_rss(irc_gateway, baseline)


def test_ten_megabytes_without_a_newline_are_skipped(hostile_prosody, irc_gateway, ports, baseline):
    """
    A line longer than IRCv3 allows (8191 bytes of tags + 512) is skipped up to
    its newline, without buffering it: the connection and the room live on and
    the next line arrives.
    """
    room = f"#flood%hostile.test@{irc_gateway.domain}"

    async def attack(client, hostile, peers):
        client.send_raw(f"<presence to='{room}/me'><x xmlns='{NS_MUC}'/></presence>")
        await client.next_presence(lambda p: p.get("from") == f"{room}/me" and 110 in statuses(p), timeout=20)
        await client.next_message(lambda m: body(m) == "after the flood", timeout=60)
        assert hostile.connections == 1, "the gateway reconnected: the connection was dropped"

    scenario(hostile_prosody, irc_gateway, ports, attack, "#after-flood")
    check_rss(irc_gateway, baseline)


def test_a_server_that_never_reads_cannot_grow_the_send_buffer(hostile_prosody, irc_gateway, ports, baseline):
    """
    A server that stops reading and floods PINGs: the gateway stops reading a
    server that does not read its answers (back-pressure), so the PONGs it owes
    stay within the socket's buffers instead of growing its memory.
    """
    room = f"#pingflood%hostile.test@{irc_gateway.domain}"

    async def attack(client, hostile, peers):
        client.send_raw(f"<presence to='{room}/me'><x xmlns='{NS_MUC}'/></presence>")
        await client.next_presence(lambda p: p.get("from") == f"{room}/me" and 110 in statuses(p), timeout=20)
        deadline = asyncio.get_running_loop().time() + 90
        while not hasattr(hostile, "flooded") and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
        assert hasattr(hostile, "flooded"), "the flood did not end"
        check_rss(irc_gateway, baseline)

    scenario(hostile_prosody, irc_gateway, ports, attack, "#after-pingflood")
    check_rss(irc_gateway, baseline)


def test_cap_negotiation_that_never_ends_times_out(hostile_prosody, irc_gateway, ports, baseline):
    """
    A server that keeps CAP LS going forever: after the registration deadline the
    connection is dropped and the join fails with a readable error.
    """
    room = f"#any%stall.test@{irc_gateway.domain}"

    async def attack(client, hostile, peers):
        client.send_raw(f"<presence to='{room}/me'><x xmlns='{NS_MUC}'/></presence>")
        err = await client.next_presence(lambda p: p.get("type") == "error", timeout=REGISTRATION_TIMEOUT + 20)
        condition, text = error_of(err)
        assert condition == "remote-server-timeout", (condition, text)
        assert "registration" in text and "stall.test" in text

    scenario(hostile_prosody, irc_gateway, ports, attack, "#after-stall")
    check_rss(irc_gateway, baseline)


async def configure(client, server_jid: str, fields: dict) -> None:
    """Set a user's settings for one IRC server through the ``configure`` ad-hoc command."""
    first = await client.plugin["xep_0050"].send_command(server_jid, "configure", timeout=10)
    done = client.Iq(stype="set", sto=server_jid)
    done["command"]["node"] = "configure"
    done["command"]["sessionid"] = first["command"]["sessionid"]
    done["command"]["action"] = "complete"
    form = done["command"]["form"]
    form["type"] = "submit"
    for key, value in fields.items():
        form.add_field(key, value=value, ftype="text-multi" if isinstance(value, list) else None)
    completed = await done.send(timeout=10)
    assert completed["command"]["status"] == "completed"


def test_sasl_that_never_finishes_times_out(hostile_prosody, irc_gateway, ports, baseline):
    """
    A server that ACKs ``sasl`` and never answers AUTHENTICATE: the user (with
    a SASL password for it) gets a readable error within the registration
    deadline, nothing but AUTHENTICATE PLAIN was sent, and the stream stays up.
    """
    server_jid = f"saslstall.test@{irc_gateway.domain}"
    room = f"#any%saslstall.test@{irc_gateway.domain}"
    secret = "sasl-stall-secret"

    async def attack(client, hostile, peers):
        await configure(client, server_jid, {"sasl_password": secret})
        loop = asyncio.get_running_loop()
        began = loop.time()
        client.send_raw(f"<presence to='{room}/me'><x xmlns='{NS_MUC}'/></presence>")
        err = await client.next_presence(lambda p: p.get("type") == "error", timeout=REGISTRATION_TIMEOUT + 20)
        waited = loop.time() - began
        condition, text = error_of(err)
        assert condition == "remote-server-timeout", (condition, text)
        assert "registration" in text and "saslstall.test" in text
        # The deadline, not some later timer (slack for the user's own server and the connect).
        assert waited < REGISTRATION_TIMEOUT + 5, waited
        received = peers["saslstall"].received
        assert "AUTHENTICATE PLAIN" in received, received
        assert not any(secret in line for line in received), received

    scenario(hostile_prosody, irc_gateway, ports, attack, "#after-saslstall")
    check_rss(irc_gateway, baseline)


def test_an_endless_motd_is_not_kept(hostile_prosody, irc_gateway, ports, baseline):
    """
    A server that sends MOTD lines (372, ~8 KB each) forever after the welcome:
    none is kept (the gateway never shows the MOTD; Twisted's IRCClient would
    append every line to a list, and the registration deadline no longer
    applies once signed on). ~96 MB of MOTD later the user's channel still
    gets its message, and RSS stays within the bound.
    """
    room = f"#motd%motd.test@{irc_gateway.domain}"

    async def attack(client, hostile, peers):
        motd = peers["motd"]
        client.send_raw(f"<presence to='{room}/me'><x xmlns='{NS_MUC}'/></presence>")
        await client.next_presence(lambda p: p.get("from") == f"{room}/me" and 110 in statuses(p), timeout=30)
        mark = await client.next_message(lambda m: (body(m) or "").endswith(" motd lines"), timeout=90)
        assert mark.get("from") == f"{room}/op"
        assert motd.motd_sent >= HostileIRC.MOTD_LINES_BEFORE_MARK and motd.connections == 1
        check_rss(irc_gateway, baseline)

    scenario(hostile_prosody, irc_gateway, ports, attack, "#after-motd")
    check_rss(irc_gateway, baseline)


# -- destination policy, caps, secrets ---------------------------------------------------


async def join_error(client, room: str) -> tuple[str | None, str]:
    client.send_raw(f"<presence to='{room}/me'><x xmlns='{NS_MUC}'/></presence>")
    err = await client.next_presence(lambda p: p.get("type") == "error" and p.get("from", "").startswith(room),
                                     timeout=30)
    return error_of(err)


def test_destination_policy_refuses_private_addresses_and_other_ports(hostile_prosody, fresh_dir):
    """
    Defaults: a user-chosen host that is (or resolves to) loopback or private
    is refused with not-allowed naming the reason; so is a port outside the set,
    before any connection is tried.
    """
    gateway = start_gateway(hostile_prosody, fresh_dir, "hirc2", adapter="irc", options={"throttle_rate": 0.0})
    user = hostile_prosody.register(user_name("hircpol"), "pw")
    d = gateway.domain
    listener = {"connections": 0}

    async def body_():
        async def count(reader, writer):
            listener["connections"] += 1
            writer.close()

        try:
            trap = await asyncio.start_server(count, "127.0.0.1", 6667)     # what a pivot would reach
        except OSError:
            trap = None                                                     # taken: the other checks still hold
        client = await Client(user, "pw").start(hostile_prosody.c2s_port)
        try:
            for room, kind in ((f"#x%127.0.0.1@{d}", "loopback"), (f"#x%localhost\\3a6697@{d}", "loopback"),
                               (f"#x%10.1.2.3\\3a7000@{d}", "private"), (f"#x%169.254.169.254\\3a6667@{d}", "link-local"),
                               (f"#x%0.0.0.0\\3a6667@{d}", "unspecified")):
                condition, text = await join_error(client, room)
                assert condition == "not-allowed" and f"{kind} address" in text, (room, condition, text)
            condition, text = await join_error(client, f"#x%irc.example.net\\3a6379@{d}")
            assert condition == "not-allowed" and "port 6379 is not allowed" in text, (condition, text)
            assert listener["connections"] == 0
        finally:
            await client.stop()
            if trap is not None:
                trap.close()

    try:
        run(body_(), timeout=90)
    finally:
        gateway.stop()


def test_caps_sasl_without_fallback_and_sealed_connect_commands(hostile_prosody, fresh_dir):
    """
    With private destinations allowed (as an operator may for a LAN): the third
    server and the fourth channel of one user are refused with policy-violation;
    a SASL password is never sent when the server offers no SASL (the join
    fails with not-authorized instead); connect commands are stored sealed and
    shown masked, in the form and in `registry export`.
    """
    good_port, bare_port = free_port(), free_port()
    gateway = start_gateway(hostile_prosody, fresh_dir, "hirc3", adapter="irc", options={
        "throttle_rate": 0.0, "allow_private": True, "allowed_ports": [good_port],
        "max_sessions_per_user": 2, "max_rooms_per_user": 3,
        "servers": {"bare.test": {"host": "127.0.0.1", "port": bare_port, "tls": False}}})
    user = hostile_prosody.register(user_name("hirccap"), "pw")
    d = gateway.domain
    secret = "hunter2-never-shown"

    async def body_():
        good = await ScriptedSASLServer(good_port, account=None).start()
        bare = await HostileIRC("bare.test").listen_on(bare_port).start()
        client = await Client(user, "pw").start(hostile_prosody.c2s_port)
        try:
            a, b = f"127.0.0.1\\3a{good_port}", f"localhost\\3a{good_port}"     # XEP-0106: ":" is \3a
            for server in (a, b):
                await configure(client, f"{server}@{d}", {"tls": "no"})
            for room in (f"#one%{a}@{d}", f"#two%{a}@{d}", f"#three%{b}@{d}"):
                client.send_raw(f"<presence to='{room}/me'><x xmlns='{NS_MUC}'/></presence>")
                await client.next_message(lambda m: body(m) == "from the past"
                                          and m.get("from", "").startswith(room), timeout=20)
            condition, text = await join_error(client, f"#four%{a}@{d}")
            assert condition == "policy-violation" and "3 IRC channels" in text, (condition, text)
            client.send_raw(f"<presence type='unavailable' to='#two%{a}@{d}/me'/>")
            condition, text = await join_error(client, f"#x%bare.test@{d}")       # a third server
            assert condition == "policy-violation" and "2 IRC servers" in text, (condition, text)
            client.send_raw(f"<presence type='unavailable' to='#three%{b}@{d}/me'/>")
            client.send_raw(f"<presence type='unavailable' to='#one%{a}@{d}/me'/>")
            await client.next_presence(lambda p: p.get("from") == f"#one%{a}@{d}/me" and p.get("type") == "unavailable")

            # SASL configured, the server offers none: refused, nothing of the password on the wire.
            await configure(client, f"bare.test@{d}", {"sasl_password": secret,
                                                       "after_connect": [f"PRIVMSG NickServ :IDENTIFY {secret}"]})
            condition, text = await join_error(client, f"#y%bare.test@{d}")
            assert condition == "not-authorized" and "SASL" in text, (condition, text)
            assert bare.connections >= 1 and not any(secret in line for line in bare.received), bare.received

            shown = await client.plugin["xep_0050"].send_command(f"bare.test@{d}", "configure", timeout=10)
            values = shown["command"]["form"].get_values()
            assert values["after_connect"] in (["PRIVMSG NickServ :IDENTIFY ********"],
                                               "PRIVMSG NickServ :IDENTIFY ********"), values
            assert secret not in str(values)
        finally:
            await client.stop()
            good.close()
            bare.close()

    try:
        run(body_(), timeout=120)
    finally:
        gateway.stop()
    exported = subprocess.run([sys.executable, "-m", "gateway.cli", "registry", "export", "--config",
                               gateway.config_path], capture_output=True, text=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    assert user in exported.stdout and secret not in exported.stdout
    assert secret not in gateway.log()
