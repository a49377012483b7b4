"""
XEP-0199 on a component stream: answer pings to the component and its
contacts, ping the server to find out whether the stream is still alive, and
use an answered ping as the delivery barrier for inbound messages.

XEP-0114 has no acknowledgements. A server handles one stream in order, so
when a ping we wrote comes back to us it has read and routed everything we
wrote before it: that is the only proof of receipt a component can get
(``barrier``). The ping is addressed from and to one of our own JIDs (the
``probe``) rather than to the server: behind ejabberd's ``domain_balancing``
the server's answer is routed by *its* sender and may reach another
connection, while a stanza from our probe JID comes back on the connection
whose slot that JID hashes to (see docs/notes-ejabberd-balancing.md).

A stream is declared dead only when it makes no progress for ``timeout``
seconds while a ping waits: nothing heard from the server *and* nothing of our
own backlog taken by it (checked every ``timeout`` seconds, so a frozen
server is found within one to two timeouts). A slow answer behind thousands of presences we wrote
is a busy server, not a dead one (the stream used to be dropped then, losing
the backlog); a SIGSTOPped or vanished server takes nothing and says nothing.
"""

from __future__ import annotations

import fcntl
import struct
import termios
import uuid

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.words.protocols.jabber.xmlstream import toResponse
from twisted.words.xish import domish

from wokkel.subprotocols import XMPPHandler

NS_PING = "urn:xmpp:ping"
log = Logger(namespace="gateway.xmpp.ping")


def unsent_bytes(transport) -> int:
    """
    Bytes written to ``transport`` that the peer has not acknowledged yet:
    Twisted's own buffer plus, where the kernel tells (TIOCOUTQ on Linux), the
    socket's send queue. A server that reads shrinks it even while it is too
    busy to answer a ping; a frozen one does not.
    """
    buffered = getattr(transport, "dataBuffer", b"")
    unsent = (len(buffered) - getattr(transport, "offset", 0)) + getattr(transport, "_tempDataLen", 0)
    try:
        fd = transport.fileno()
        unsent += struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (AttributeError, OSError, ValueError):
        pass
    return unsent


class PingHandler(XMPPHandler):
    def __init__(self, domain: str, interval: float, timeout: float, clock):
        super().__init__()
        self.domain = domain
        #: Makes our ping ids (and default probe) this connection's own: several
        #: processes serving one domain must never take each other's answers.
        self._nonce = uuid.uuid4().hex[:12]
        #: The JID our pings go from and to; one that routes back to this connection.
        self.probe = f"gw-probe-{self._nonce}@{domain}"
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self._counter = 0
        self._waiting: dict[str, list[defer.Deferred]] = {}
        self._heard = 0.0
        self._progress = 0.0
        self._written = 0
        self._taken = 0
        self._watch = None
        self._due = 0.0
        self._keepalive = None

    # -- stream life ------------------------------------------------------

    def connectionInitialized(self):
        xs = self.xmlstream
        xs.addObserver(f"/iq[@type='get']/ping[@xmlns='{NS_PING}']", self._answered, priority=1)
        xs.addObserver(f"/iq[@type='get']/ping[@xmlns='{NS_PING}']", self.on_ping)
        xs.addObserver("/iq[@type='error']", self._answered)
        received = xs.dataReceived

        def data_received(data):
            self._heard = self.clock.seconds()
            received(data)

        xs.dataReceived = data_received
        self._written = 0
        transport, write = xs.transport, xs.transport.write

        def counted_write(data):
            self._written += len(data)
            write(data)

        transport.write = counted_write
        self._heard = self._progress = self.clock.seconds()
        if self.interval > 0:
            self._keepalive = self.clock.callLater(self.interval, self._idle_check)

    def connectionLost(self, reason):
        for timer in (self._watch, self._keepalive):
            if timer is not None and timer.active():
                timer.cancel()
        self._watch = self._keepalive = None
        waiting, self._waiting = self._waiting, {}
        for ds in waiting.values():
            for d in ds:
                d.errback(ConnectionLost("the component stream ended before the server answered"))

    def on_ping(self, iq):
        if getattr(iq, "handled", False):
            return
        iq.handled = True
        self.send(toResponse(iq, "result"))

    # -- pings ------------------------------------------------------------

    def barrier(self) -> defer.Deferred:
        """Fires once the server has answered a ping written after everything sent so far."""
        if not self.parent.connected or self.xmlstream is None or self.xmlstream.transport is None:
            return defer.fail(ConnectionLost("the component stream is down"))
        d = defer.Deferred()
        self._waiting[self._ping()].append(d)
        return d

    def _ping(self) -> str:
        self._counter += 1
        iq = domish.Element((None, "iq"))
        iq["type"] = "get"
        iq["id"] = ping_id = f"gw-ping-{self._nonce}-{self._counter}"
        iq["to"] = iq["from"] = self.probe
        iq.addElement((NS_PING, "ping"))
        self._waiting[ping_id] = []
        self.xmlstream.send(iq)
        if self._watch is None or not self._watch.active():
            self._taken = self._consumed()
            self._progress = self.clock.seconds()
            self._watch_at(self.timeout)
        return ping_id

    def _watch_at(self, delay: float) -> None:
        self._due = self.clock.seconds() + delay
        self._watch = self.clock.callLater(delay, self._check)

    def _answered(self, iq):
        """Our ping back (or an error for it) proves the server read the stream up to it."""
        if iq.getAttribute("from") != self.probe:
            return
        waiting = self._waiting.pop(iq.getAttribute("id"), None)
        if waiting is None:
            return
        iq.handled = True
        for d in waiting:
            d.callback(None)
        if not self._waiting and self._watch is not None and self._watch.active():
            self._watch.cancel()

    def _consumed(self) -> int:
        """Bytes of this stream the server has acknowledged (written minus still unsent)."""
        return self._written - unsent_bytes(self.xmlstream.transport)

    def _idle_check(self) -> None:
        """Keepalive: a ping when the server has been silent for a whole interval."""
        now = self.clock.seconds()
        if now - self._heard >= self.interval and not self._waiting:
            self._ping()
        self._keepalive = self.clock.callLater(self.interval, self._idle_check)

    def _check(self) -> None:
        """A ping is waiting: is the stream still moving?"""
        if not self._waiting or self.xmlstream is None or self.xmlstream.transport is None:
            return
        now = self.clock.seconds()
        taken = self._consumed()
        if taken > self._taken or now - self._due > self.timeout / 2:
            # The server is taking our backlog; or this check ran late because our own process
            # was not scheduled (a busy machine, a long reactor turn), and a stall of ours says
            # nothing about the server: measure a fresh interval from here.
            self._progress = now
        self._taken = taken
        progress = max(self._progress, self._heard)
        if now - progress < self.timeout:
            self._watch_at(progress + self.timeout - now)
            return
        log.warn("component {domain}: no answer and no progress on the stream for {t} s; dropping it "
                 "(what it did not confirm is written again after the reconnect)", domain=self.domain,
                 t=self.timeout)
        self.xmlstream.transport.abortConnection()
