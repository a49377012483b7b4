"""A raw IRC client for the IRC side of the tests: no library between the test and the wire."""

import asyncio
import time


class RawIRC:
    def __init__(self, port: int, nick: str):
        self.port = port
        self.nick = nick
        self.lines: asyncio.Queue = asyncio.Queue()
        self.seen: list[str] = []

    async def connect(self) -> "RawIRC":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.send(f"NICK {self.nick}", f"USER {self.nick} 0 * :{self.nick}")
        self._task = asyncio.ensure_future(self._read())
        await self.expect(lambda l: f" 001 {self.nick} " in l)
        return self

    async def _read(self):
        while True:
            raw = await self.reader.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("PING"):
                self.send("PONG" + line[4:])
                continue
            self.seen.append(line)
            self.lines.put_nowait(line)

    def send(self, *lines: str) -> None:
        for line in lines:
            self.writer.write(line.encode() + b"\r\n")

    async def expect(self, predicate, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.nick}: no matching IRC line within {timeout} s")
            try:
                line = await asyncio.wait_for(self.lines.get(), left)
            except asyncio.TimeoutError:
                raise AssertionError(f"{self.nick}: no matching IRC line within {timeout} s")
            if predicate(line):
                return line

    async def collect(self, predicate, count: int, timeout: float = 10.0) -> list[str]:
        return [await self.expect(predicate, timeout) for _ in range(count)]

    async def close(self) -> None:
        try:
            self.send("QUIT :bye")
            self.writer.close()
        except Exception:
            pass
        self._task.cancel()


class ScriptedSASLServer:
    """
    Just enough of an IRCv3 server to test CAP and SASL PLAIN: it offers sasl,
    server-time and message-tags, checks the PLAIN credentials, then welcomes the
    client, answers JOIN with NAMES and sends one message tagged with time and msgid.
    """

    def __init__(self, port: int, account: str | None, password: str | None = None,
                 after_welcome: tuple[str, ...] = (), after_join: tuple[str, ...] = ()):
        """Without ``account`` no SASL is needed; the ``after_*`` lines (``{nick}``, ``{channel}`` filled in) follow."""
        self.port = port
        self.expected = f"{account}\0{account}\0{password}" if account else None
        self.after_welcome = after_welcome
        self.after_join = after_join
        self.received: list[str] = []
        self.authenticated = False

    async def start(self) -> "ScriptedSASLServer":
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        return self

    async def _client(self, reader, writer):
        import base64

        def send(line):
            writer.write(line.encode() + b"\r\n")

        nick = None
        while True:
            raw = await reader.readline()
            if not raw:
                return
            line = raw.decode().rstrip("\r\n")
            self.received.append(line)
            if line.startswith("CAP LS"):
                send(":sasl.test CAP * LS :sasl server-time message-tags")
            elif line.startswith("CAP REQ"):
                send(":sasl.test CAP * ACK :" + line.split(":", 1)[1])
            elif line == "AUTHENTICATE PLAIN":
                send("AUTHENTICATE +")
            elif line.startswith("AUTHENTICATE "):
                if base64.b64decode(line.split(" ", 1)[1]).decode() == self.expected:
                    self.authenticated = True
                    send(":sasl.test 900 * * saslnick :You are now logged in")
                    send(":sasl.test 903 * :SASL authentication successful")
                else:
                    send(":sasl.test 904 * :SASL authentication failed")
            elif line.startswith("NICK "):
                nick = line.split(" ", 1)[1]
            elif line == "CAP END" and (self.authenticated or self.expected is None):
                send(f":sasl.test 001 {nick} :Welcome")
                for extra in self.after_welcome:
                    send(extra.format(nick=nick))
            elif line.startswith("JOIN "):
                channel = line.split(" ", 1)[1]
                send(f":{nick}!u@h JOIN {channel}")
                send(f":sasl.test 353 {nick} = {channel} :{nick} @op")
                send(f":sasl.test 366 {nick} {channel} :End of NAMES")
                send(f"@time=2020-01-02T03:04:05.000Z;msgid=abc123 :op!o@h PRIVMSG {channel} :from the past")
                for extra in self.after_join:
                    send(extra.format(nick=nick, channel=channel))
            await writer.drain()

    def close(self) -> None:
        self.server.close()


class SilentIRC:
    """
    A server that accepts TCP and reads, but never welcomes (no ``001``) until
    ``welcome`` is set: the half-accepted connection a full listen backlog leaves.
    """

    def __init__(self, port: int):
        self.port = port
        self.welcome = False
        self.connections = 0
        self.stamps: list[float] = []

    async def start(self) -> "SilentIRC":
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        return self

    async def _client(self, reader, writer):
        self.connections += 1
        self.stamps.append(time.monotonic())
        welcoming = self.welcome
        nick = "x"
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not welcoming:
                    continue
                if line.startswith("CAP LS"):
                    writer.write(b":silent.test CAP * LS :\r\n")
                elif line.startswith("NICK "):
                    nick = line.split(" ", 1)[1]
                elif line == "CAP END":
                    writer.write(f":silent.test 001 {nick} :Welcome at last\r\n".encode())
                elif line.startswith("JOIN "):
                    channel = line.split(" ", 1)[1]
                    writer.write(f":{nick}!u@h JOIN {channel}\r\n:silent.test 353 {nick} = {channel} :{nick}\r\n"
                                 f":silent.test 366 {nick} {channel} :End of NAMES\r\n".encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self.server.close()


class CountingProxy:
    """
    A TCP proxy in front of an IRC server that notes when each connection is
    accepted: the attempts as the server sees them, whatever the gateway thinks
    it does. Upstream unreachable (the server restarting): the connection is closed.
    """

    def __init__(self, port: int, upstream: int):
        self.port = port
        self.upstream = upstream
        self.stamps: list[float] = []
        self.tasks: set = set()

    async def start(self) -> "CountingProxy":
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port, backlog=1024)
        return self

    async def _client(self, reader, writer):
        self.stamps.append(time.monotonic())
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        for coro in (pipe(reader, up_writer), pipe(up_reader, writer)):
            task = asyncio.ensure_future(coro)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def most_in_window(self, since: float, window: float = 1.0) -> int:
        """The most connections accepted in any ``window`` seconds after ``since``."""
        stamps = sorted(t for t in self.stamps if t >= since)
        return max((sum(1 for u in stamps[i:] if u < t + window) for i, t in enumerate(stamps)), default=0)

    def close(self) -> None:
        self.server.close()
        for task in list(self.tasks):
            task.cancel()


class LoadComponent:
    """
    Many XMPP users for the price of one socket: an XEP-0114 component of the
    test's Prosody whose users (``u1@load.localhost``...) join rooms of the
    gateway. What the gateway sends them is parsed as it comes and kept in
    ``stanzas``; a subclass that only counts overrides ``on_stanza`` (and
    ``on_data`` to see the bytes as they come).
    """

    NS = "jabber:component:accept"
    READ_SIZE = 65536

    def __init__(self, port: int, domain: str, secret: str):
        self.port, self.domain, self.secret = port, domain, secret
        self.stanzas: list = []
        self.changed = asyncio.Event()
        self.handshaken = asyncio.Event()

    async def start(self) -> "LoadComponent":
        import hashlib
        import xml.etree.ElementTree as ET

        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(f"<stream:stream xmlns='{self.NS}' xmlns:stream='http://etherx.jabber.org/streams' "
                          f"to='{self.domain}'>".encode())
        self.parser = ET.XMLPullParser(("start", "end"))
        self.depth = 0
        self.root = None
        while self.root is None:
            self.parser.feed(await self.reader.read(4096))
            for event, el in self.parser.read_events():
                if event == "start" and el.tag.endswith("}stream"):
                    self.root = el
                    self.depth = 1
                    break
        digest = hashlib.sha1((self.root.get("id") + self.secret).encode()).hexdigest()
        self.writer.write(f"<handshake>{digest}</handshake>".encode())
        self._task = asyncio.ensure_future(self._read())
        await asyncio.wait_for(self.handshaken.wait(), 10)
        return self

    async def _read(self):
        while data := await self.reader.read(self.READ_SIZE):
            self.on_data(data)
            self.parser.feed(data)
            for event, el in self.parser.read_events():
                if event == "start":
                    self.depth += 1
                    continue
                self.depth -= 1
                if self.depth == 1:
                    if el.tag.endswith("}handshake"):
                        self.handshaken.set()
                    self.on_stanza(el)
            del self.root[:]                  # the stream's element keeps no stanza: on_stanza decides
            self.changed.set()

    def on_data(self, data: bytes) -> None:
        """Bytes as they came (before parsing)."""

    def on_stanza(self, el) -> None:
        self.stanzas.append(el)

    def send(self, xml: str) -> None:
        self.writer.write(xml.encode())

    async def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{what}: not within {timeout} s")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        try:
            self.writer.write(b"</stream:stream>")
            self.writer.close()
        except Exception:
            pass
        self._task.cancel()


def start_irc_gateway(prosody, workdir: str, name: str, **servers):
    """The gateway process as component ``name`` with the IRC adapter, serving the given IRC
    servers (address → a started ngircd/InspIRCd), unthrottled, for one test module."""
    import os
    from tests.integration.gateway_fixture import start_gateway

    path = os.path.join(workdir, f"{name}-gw")
    os.makedirs(path, exist_ok=True)
    return start_gateway(prosody, path, name, adapter="irc", options={
        "servers": {address: {"host": "127.0.0.1", "port": server.port, "tls": False}
                    for address, server in servers.items()},
        "throttle_rate": 0.0, "allowed_servers": list(servers)})


def irc_server_fixture(kind: str, name: str):
    """A module-scoped fixture of a started ngircd (``kind`` "ngircd", fixture ``ircd``) or
    InspIRCd without SASL ("inspircd", fixture ``inspircd``), in its own directory ``<kind>-<name>``."""
    import os

    import pytest

    @pytest.fixture(scope="module", name="ircd" if kind == "ngircd" else "inspircd")
    def server(workdir):
        if kind == "ngircd":
            from gateway.testing.ngircd import Ngircd
            started = Ngircd(os.path.join(workdir, f"ngircd-{name}")).start()
        else:
            from gateway.testing.inspircd import InspIRCd
            started = InspIRCd(os.path.join(workdir, f"inspircd-{name}"), sasl=False).start()
        yield started
        started.stop()
    return server

