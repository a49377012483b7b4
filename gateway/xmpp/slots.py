"""
Which share of a component domain's traffic a connection gets, and keeping a
dead process's share served.

ejabberd's ``domain_balancing`` (``type: bare_source``, ``component_number:
N``) gives a component domain N slots; a stanza goes to the connection in slot
``phash2(bare sender, N) + 1``, and is dropped silently when that slot is
empty. Only a handshake claims a slot, and a connection that handshakes while
every slot is taken is accepted but never gets any traffic, not even when a
slot frees later (docs/notes-ejabberd-balancing.md). The server does not say
which slot, if any, a connection got. So every connection finds out:

- ``SlotProbe``: after the handshake, and before the stream counts as
  connected, it sends ``PROBES`` messages from and to
  ``gw-slot-K-NONCE@domain``; a message comes back on the connection whose
  slot its sender hashes to. The probes that come back on this connection are
  its slot's; one of them becomes the ping handler's ``probe`` (pings and the
  inbound barrier must come back here). None back: no slot. On Prosody or an
  ejabberd without balancing every probe comes back.
- ``SpareKeeper``: every ``spare_connection_interval`` seconds it opens one
  more connection for the domain and keeps it only if it got a slot: that is
  how a survivor takes over the slot of a process that died.
- ``StreamGroup``: the bridge's output over the process's connections of one
  domain (the primary, and spares that hold a slot).

Probe messages carry the ``NS_SLOT`` payload and are taken out of the stream
before any handler sees them, whichever connection (or process) they reach.
"""

from __future__ import annotations

import secrets
from typing import Callable

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.words.xish import domish

log = Logger(namespace="gateway.xmpp.slots")

NS_SLOT = "urn:xmpp-gateway:slot-probe:0"
#: Probe JIDs per connection. With random names each time, the chance that none
#: hashes to a given one of N slots is ((N-1)/N)^32: 2e-10 for N = 2, 1e-4 for
#: N = 4; a connection wrongly judged slotless just reconnects.
PROBES = 32
PREFIX = "gw-slot-"


def is_probe(element: domish.Element) -> bool:
    """A slot probe of any gateway connection (cheap test first: the sender's local part)."""
    if element.name != "message" or not (element.getAttribute("from") or "").startswith(PREFIX):
        return False
    return any(child.uri == NS_SLOT for child in element.elements())


class SlotFound:
    def __init__(self, probe: str, back: int, sent: int):
        #: A JID of this connection's slot: the ping handler's probe.
        self.probe = probe
        self.back = back
        self.sent = sent

    @property
    def whole_domain(self) -> bool:
        return self.back == self.sent


class SlotProbe:
    """
    One probe run on a freshly authenticated stream. ``result`` fires with a
    ``SlotFound``, or with None when nothing came back within ``timeout``.

    It ends early: once one probe is back, a fence is sent from that probe's
    JID (known to be ours); the server routes one stream's stanzas in order,
    so when the fence is back every earlier probe that hashes to this slot is
    back too.
    """

    def __init__(self, domain: str, send: Callable[[domish.Element], None], clock, timeout: float,
                 count: int = PROBES):
        self.domain = domain
        self.nonce = secrets.token_hex(4)
        self.jids = [f"{PREFIX}{k}-{self.nonce}@{domain}" for k in range(count)]
        self.back: list[int] = []
        self.result = defer.Deferred()
        self._send = send
        self._clock = clock
        self._timeout = timeout
        self._timer = None
        self._fenced = False

    def start(self) -> defer.Deferred:
        for k in range(len(self.jids)):
            self._send(self._stanza(k))
        self._timer = self._clock.callLater(self._timeout, self._finish)
        return self.result

    def _stanza(self, k: int, fence: bool = False) -> domish.Element:
        el = domish.Element((None, "message"))
        el["from"] = el["to"] = self.jids[k]
        el["type"] = "normal"
        el["id"] = f"{PREFIX}{self.nonce}-{k}" + ("-fence" if fence else "")
        probe = el.addElement((NS_SLOT, "probe"))
        probe["nonce"] = self.nonce
        probe["k"] = str(k)
        if fence:
            probe["fence"] = "1"
        return el

    def received(self, element: domish.Element) -> None:
        """A probe stanza arrived on this connection (maybe another connection's: ignored)."""
        if self.result.called:
            return
        probe = next((c for c in element.elements() if c.uri == NS_SLOT), None)
        if probe is None or probe.getAttribute("nonce") != self.nonce:
            return
        try:
            k = int(probe.getAttribute("k", ""))
        except ValueError:
            return
        if not 0 <= k < len(self.jids):
            return
        if probe.getAttribute("fence"):
            self._finish()
            return
        if k not in self.back:
            self.back.append(k)
        if len(self.back) == len(self.jids):
            self._finish()
        elif not self._fenced:
            self._fenced = True
            self._send(self._stanza(k, fence=True))

    def cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if not self.result.called:
            self.result.errback(ConnectionLost("the stream ended during the slot probe"))

    def _finish(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.result.called:
            return
        if self.back:
            self.result.callback(SlotFound(self.jids[self.back[0]], len(self.back), len(self.jids)))
        else:
            self.result.callback(None)


class StreamGroup:
    """
    The bridge's view of one domain's connections in this process: what it
    writes goes on the primary while that holds a slot, else on a spare that
    does. Each connection's own ping confirms what was written on it, so the
    barrier pings every connection written on since the previous barrier
    (and fails if one of them has since gone or reconnected: the rows are then
    written again). Quacks like the stream ``StanzaOutput`` expects.
    """

    def __init__(self, primary, bridge):
        self.primary = primary
        self.bridge = bridge
        self.domain = primary.domain
        self.spares: list = []
        #: stream -> its connection generation when last written on, since the last barrier.
        self._written: dict = {}

    @property
    def members(self) -> list:
        return [self.primary, *self.spares]

    @property
    def connected(self) -> bool:
        # Asked for every message: the usual answer (the primary is up) without building the member list.
        return self.primary.connected or any(s.connected for s in self.spares)

    def current(self):
        for stream in self.members:
            if stream.connected:
                return stream
        return self.primary

    # -- what StanzaOutput uses ---------------------------------------------

    def _writing(self):
        # Every stanza written: the usual answer (the primary holds its slot) without the member list.
        stream = self.primary
        if not stream.connected:
            stream = self.current()
            if not stream.connected:
                return stream
        seen = self._written.get(stream)
        # Written on an earlier connection of this stream too: a ping on this one cannot confirm that.
        self._written[stream] = stream.generation if seen in (None, stream.generation) else -1
        return stream

    def send(self, obj) -> None:
        self._writing().send(obj)

    def send_serialized(self, xml: str, kind: str) -> None:
        self._writing().send_serialized(xml, kind)

    def count_error(self, condition: str) -> None:
        self.primary.count_error(condition)

    def unsent(self) -> int:
        """Bytes written on the connection in use that its server has not taken yet (room pacing)."""
        return self.current().unsent()

    @property
    def pinger(self):
        return self

    def barrier(self) -> defer.Deferred:
        written, self._written = self._written, {}
        if not written:
            stream = self.current()
            written = {stream: stream.generation}
        pings = []
        for stream, generation in written.items():
            if stream.generation != generation or not stream.connected:
                return defer.fail(ConnectionLost(f"the {stream.role} connection written on has gone since"))
            pings.append(stream.pinger.barrier())
        if len(pings) == 1:
            return pings[0]
        d = defer.gatherResults(pings, consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure if f.check(defer.FirstError) else f)
        return d.addCallback(lambda _: None)

    # -- membership (BridgeLink and SpareKeeper) ---------------------------

    def member_up(self, stream) -> None:
        """A connection of the group holds a slot and its handlers are up."""
        self.bridge.stream_up()

    def member_down(self, stream) -> None:
        if not self.connected:
            self.bridge.stream_down()


class SpareKeeper(service.Service):
    """
    Every ``interval`` seconds, while the primary connection holds a slot (and
    has for at least ``interval``, so that processes starting together each
    claim their own slot first), open one spare connection for the domain;
    keep it if its probe finds a slot, close it at once otherwise. Only one
    attempt is under way at a time. A kept spare that loses its stream is not
    reconnected: the next attempt takes whatever slot is free then.
    """

    def __init__(self, group: StreamGroup, build: Callable[[], object], interval: float, clock):
        self.group = group
        self.build = build
        self.interval = interval
        self.clock = clock
        self.attempts = 0
        self._trying = None
        self._loop: task.LoopingCall | None = None
        self._disabled = False

    def startService(self):
        super().startService()
        log.info("component {domain}: a spare connection every {t:g} s while the primary has a slot, kept only if "
                 "it gets a slot (one of a process that is gone)", domain=self.group.domain, t=self.interval)
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return super().stopService()

    def tick(self) -> None:
        primary = self.group.primary
        if self._disabled or self._trying is not None or not self.running:
            return
        if not primary.connected or self.clock.seconds() - primary.slotted_at < self.interval:
            return
        self.attempts += 1
        spare = self.build()
        self._trying = spare
        self.group.spares.append(spare)
        spare.on_gone = self._gone
        spare.slot_result.addBoth(self._outcome, spare)
        spare.startService()

    def _outcome(self, found, spare):
        if self._trying is spare:
            self._trying = None
        if found is True:
            log.warn("component {domain}: a spare connection took a free slot (a process serving this domain is "
                     "gone, or has not connected yet) and serves that slot's users; {n} connection(s) of this "
                     "process now hold a slot", domain=self.group.domain,
                     n=sum(1 for s in self.group.members if s.connected))
            return None
        if getattr(spare, "conflict", False) and not self._disabled:
            self._disabled = True
            log.warn("component {domain}: the server refused a spare connection with <conflict/> (it allows one "
                     "connection per domain); spare connections are off for this domain",
                     domain=self.group.domain)
        self._forget(spare)
        return None

    def _gone(self, spare) -> None:
        """A kept spare lost its stream (it does not reconnect)."""
        if self._trying is spare:
            return              # _outcome deals with it
        self._forget(spare)

    def _forget(self, spare) -> None:
        if spare in self.group.spares:
            self.group.spares.remove(spare)
        spare.close()

    def close_all(self) -> defer.Deferred:
        spares, self.group.spares = list(self.group.spares), []
        return defer.gatherResults([s.close() for s in spares])
