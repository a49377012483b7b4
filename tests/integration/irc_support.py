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
