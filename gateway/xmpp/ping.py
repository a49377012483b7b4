"""
XEP-0199: answer pings to the component and its contacts, and ping the server
on a timer so a dead stream (a server that vanished without closing TCP) is
noticed and reconnected instead of silently queuing forever.
"""

from __future__ import annotations

from twisted.internet import task
from twisted.logger import Logger
from twisted.words.protocols.jabber.xmlstream import toResponse
from twisted.words.xish import domish

from wokkel.subprotocols import XMPPHandler

NS_PING = "urn:xmpp:ping"
log = Logger(namespace="gateway.xmpp.ping")


def server_domain(component_domain: str) -> str:
    """Where keepalives go: the parent domain, usually the server's own host."""
    head, _, parent = component_domain.partition(".")
    return parent if "." in parent or parent == "localhost" else component_domain


class PingHandler(XMPPHandler):
    def __init__(self, domain: str, interval: float, timeout: float, clock):
        super().__init__()
        self.domain = domain
        self.target = server_domain(domain)
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self._loop: task.LoopingCall | None = None
        self._counter = 0

    def connectionInitialized(self):
        self.xmlstream.addObserver(f"/iq[@type='get']/ping[@xmlns='{NS_PING}']", self.on_ping)
        if self.interval > 0:
            self._loop = task.LoopingCall(self.keepalive, self.xmlstream)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False)

    def connectionLost(self, reason):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def on_ping(self, iq):
        iq.handled = True
        self.send(toResponse(iq, "result"))

    def keepalive(self, xs) -> None:
        """Any answer, result or error, proves the stream is alive."""
        self._counter += 1
        iq = domish.Element((None, "iq"))
        iq["type"] = "get"
        iq["id"] = f"keepalive-{self._counter}"
        iq["to"] = self.target
        iq["from"] = self.domain
        iq.addElement((NS_PING, "ping"))
        timer = self.clock.callLater(self.timeout, self._dead, xs)
        xs.addOnetimeObserver(f"/iq[@id='{iq['id']}']", lambda _: timer.active() and timer.cancel())
        xs.send(iq)

    def _dead(self, xs) -> None:
        log.warn("component {domain}: no answer to a keepalive ping in {t} s; dropping the stream",
                 domain=self.domain, t=self.timeout)
        if xs.transport is not None:
            xs.transport.abortConnection()
