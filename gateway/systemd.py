"""
sd_notify for ``Type=notify`` units, spoken directly on ``$NOTIFY_SOCKET``.

No libsystemd binding and no helper daemon: the protocol is one datagram of
``KEY=VALUE`` lines on a Unix socket. The watchdog keep-alive is sent from a
LoopingCall on the reactor, so a reactor that blocks stops the keep-alives and
systemd restarts the process (``WatchdogSec=``): a wedged gateway is a dead one.

READY=1 means the registry is open, the listeners are started and every
component connection has been started: not that the XMPP server has accepted
them (it may be down; the gateway reconnects), which STATUS= says instead.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Mapping

from twisted.internet import task
from twisted.logger import Logger

log = Logger(namespace="gateway.systemd")

#: How often STATUS= is refreshed with the components' connection state.
STATUS_INTERVAL = 5.0


class Notifier:
    def __init__(self, address: str, watchdog_usec: int, reactor):
        # A leading "@" names a socket in the abstract namespace.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_usec = watchdog_usec
        self.reactor = reactor
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setblocking(False)
        self._loops: list[task.LoopingCall] = []
        self._failed = False

    @classmethod
    def from_environ(cls, reactor, environ: Mapping[str, str] = os.environ) -> "Notifier | None":
        """A notifier when systemd (or a test) asked for one, else None."""
        address = environ.get("NOTIFY_SOCKET", "")
        if not address:
            return None
        usec = 0
        pid = environ.get("WATCHDOG_PID", "")
        if not pid or pid == str(os.getpid()):
            try:
                usec = max(0, int(environ.get("WATCHDOG_USEC", "0")))
            except ValueError:
                usec = 0
        return cls(address, usec, reactor)

    def send(self, **fields: str) -> bool:
        message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            self.sock.sendto(message, self.address)
            return True
        except OSError as e:            # never fatal: the service goes on without its supervisor's view
            if not self._failed:
                log.warn("sd_notify to {address!r} failed: {error}", address=self.address, error=e.strerror)
                self._failed = True
            return False

    def start(self, gateway) -> None:
        """Keep-alives now; READY=1 once the gateway has started (``gateway.ready``)."""
        if self.watchdog_usec:
            loop = task.LoopingCall(self.send, watchdog="1")
            loop.clock = self.reactor
            loop.start(self.watchdog_usec / 2e6, now=True)
            self._loops.append(loop)
        gateway.ready.addCallback(lambda _: self._ready(gateway))

    def _ready(self, gateway) -> None:
        self.send(ready="1", status=self._status(gateway), mainpid=str(os.getpid()))
        loop = task.LoopingCall(lambda: self.send(status=self._status(gateway)))
        loop.clock = self.reactor
        loop.start(STATUS_INTERVAL, now=False)
        self._loops.append(loop)

    @staticmethod
    def _status(gateway) -> str:
        streams = getattr(gateway, "components", [])
        up = sum(1 for s in streams if getattr(s, "connected", False))
        return f"{up} of {len(streams)} component(s) connected to the XMPP server"

    def reloading(self) -> None:
        self.send(reloading="1", monotonic_usec=str(int(time.monotonic() * 1e6)))

    def reloaded(self, gateway, applied: bool) -> None:
        status = self._status(gateway) + ("" if applied else "; last reload refused, see the log")
        self.send(ready="1", status=status)

    def stopping(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self.send(stopping="1", status="stopping")
