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
