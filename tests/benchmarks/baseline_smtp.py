"""
The SMTP baseline: an aiosmtpd server that answers 250 to every mail and only
counts it (nothing parsed or stored), so the gateway's SMTP figures can be
read against a Python SMTP server doing the least. Prints the count on SIGTERM.

    python -m tests.benchmarks.baseline_smtp PORT
"""

import asyncio
import signal
import sys

from aiosmtpd.controller import Controller  # noqa: F401  (imported for its server class)
from aiosmtpd.smtp import SMTP


class Counter:
    def __init__(self):
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        return "250 OK"


async def run(port: int) -> None:
    handler = Counter()
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: SMTP(handler, hostname="sink.test"), "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("baseline_smtp: listening", flush=True)
    await stop.wait()
    srv.close()
    print(f"baseline_smtp: received {handler.count}", flush=True)


if __name__ == "__main__":
    asyncio.run(run(int(sys.argv[1])))
