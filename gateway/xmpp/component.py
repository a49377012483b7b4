"""
One XEP-0114 component stream on wokkel's component service.

What wokkel does not do and this adds: fatal stream errors (a wrong secret, an
unknown domain, a second connection) end with one clear error instead of an
endless reconnect loop; reconnect delays come from config; stanzas over the
size limit are refused with <policy-violation/> before any handler sees them;
users of domains not allowed never reach a handler; every stanza is counted;
and after the handshake a slot probe (gateway/xmpp/slots.py) finds out whether
this connection gets any of the domain's traffic before the stream counts as
connected: one without a slot (ejabberd ``domain_balancing`` with every slot
taken) is closed and, unless it is a spare, retried with backoff.
"""

from __future__ import annotations

import socket

from typing import Callable

from twisted.internet import defer
from twisted.internet import reactor as default_reactor
from twisted.logger import Logger
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish import domish

from gateway import metrics
from gateway.xmpp.ping import unsent_bytes
from gateway.xmpp.dispatch import RoutedXmlStream
from gateway.xmpp.slots import PROBES, SlotProbe, is_probe
from gateway.xmpp.stanzas import error_reply, parse_jid
from wokkel.component import Component

log = Logger(namespace="gateway.xmpp.component")

#: Stream errors that no reconnect can fix: a wrong secret or a domain the
#: server does not know. ``conflict`` is not among them: after a half-open link
#: the server may still hold our old session, which goes away on its own, so it
#: is retried with backoff like any lost stream (and logged each time, so an
#: operator who started two processes for one Prosody domain sees why).
FATAL_STREAM_ERRORS = frozenset({"not-authorized", "host-unknown", "improper-addressing",
                                 "invalid-namespace", "host-gone", "invalid-from"})
NS_REGISTER = "jabber:iq:register"
#: Requests whose protocol the gateway speaks in part only (XEP-0045 room administration).
NOT_IMPLEMENTED_NAMESPACES = frozenset({"http://jabber.org/protocol/muc#admin",
                                        "http://jabber.org/protocol/muc#owner"})


def _low_latency(xs) -> None:
    """
    Stanzas are small and latency-bound, and the delivery barrier makes the
    server write to us after every batch. Under Nagle's algorithm a small write
    waits while an earlier one is unacknowledged, and Linux delays ACKs up to
    40 ms: so a user's next stanza would wait 40 ms behind the server's answer
    to our ping (and ours behind our ping). TCP_NODELAY stops our side waiting;
    TCP_QUICKACK, set again after every read (the kernel clears it), makes us
    acknowledge at once so the server's side does not wait either.
    """
    transport = xs.transport
    if hasattr(transport, "setTcpNoDelay"):
        transport.setTcpNoDelay(True)
    quickack = getattr(socket, "TCP_QUICKACK", None)
    handle = getattr(transport, "getHandle", lambda: None)()
    if quickack is None or not isinstance(handle, socket.socket):
        return
    received = xs.dataReceived

    def data_received(data):
        try:
            handle.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        except OSError:
            pass
        received(data)

    xs.dataReceived = data_received


class FatalStreamError(Exception):
    def __init__(self, domain: str, condition: str, text: str | None):
        self.domain = domain
        self.condition = condition
        self.text = text
        explain = {
            "not-authorized": "the server refused the component secret (or serves no component of this name)",
            "host-unknown": "the server has no component configured for this domain",
            "conflict": "another connection already serves this domain",
        }.get(condition, "the server ended the stream")
        super().__init__(f"component {domain}: {explain} (stream error <{condition}/>"
                         + (f": {text}" if text else "") + ")")


class ComponentStream(Component):
    def __init__(self, domain: str, host: str, port: int, secret: str, settings: dict,
                 allowed_domains: list[str], on_fatal: Callable[[FatalStreamError], None],
                 reactor=default_reactor, role: str = "primary"):
        super().__init__(host, port, domain, secret)
        #: "primary" (reconnects for ever) or "spare" (one connection, kept only if it gets a slot).
        self.role = role
        #: Seconds the slot probe waits; 0: no probe, the connection counts as holding the only slot
        #: (settings built by hand, as in the unit tests' wire; the config always has the key).
        self.slot_probe_timeout = settings.get("slot_probe_timeout", 0.0)
        self.domain = domain
        self.set_allowed_domains(allowed_domains)
        self.size_limit = settings["stanza_size_limit"]
        self.on_fatal = on_fatal
        self._reactor = reactor
        # One dispatch per stanza kind instead of every XPath query per stanza (gateway/xmpp/dispatch.py).
        self.factory.protocol = RoutedXmlStream
        self.factory.initialDelay = settings["reconnect_initial_delay"]
        self.factory.maxDelay = settings["reconnect_max_delay"]
        self.factory.factor = 2.0
        self.factory.jitter = 0.2
        self.factory.delay = self.factory.initialDelay
        self.fatal: FatalStreamError | None = None
        self.authenticated = False
        #: True once the slot probe found that this connection gets traffic (see ``connected``).
        self.slotted = False
        self.slotted_at = 0.0
        #: The probe result of the current connection: None while unknown or without a slot.
        self.slot = None
        #: Counts connections, so a barrier can tell a reconnected stream from the one written on.
        self.generation = 0
        self.conflict = False
        #: Fires once for a spare: True when it got a slot, False when it did not (or never got that far).
        self.slot_result = defer.Deferred()
        #: Called with this stream when a spare that had a slot loses its stream.
        self.on_gone: Callable | None = None
        self._probe: SlotProbe | None = None
        self._held: list = []
        self._dispatch = None
        self._slotless = False
        #: Connections in a row that got no slot (a standby process): the retry delay grows with it.
        self._slotless_count = 0
        self._footer_sent_on = None
        if role == "spare":
            self.factory.stopTrying()
            self.factory.noisy = False           # no "Starting factory" line for every attempt
            failed = self.factory.clientConnectionFailed

            def connection_failed(connector, reason):
                failed(connector, reason)
                log.info("component {domain}: spare connection failed: {reason}", domain=self.domain,
                         reason=reason.getErrorMessage())
                self._slot_outcome(False)

            self.factory.clientConnectionFailed = connection_failed
        self._closing: list[defer.Deferred] = []
        self._stopping = False
        # Plain numbers read at scrape time (metrics.tally): counted on every stanza.
        self._count_in = {k: metrics.tally(metrics.STANZAS.labels(domain, "in", k)) for k in ("message", "presence", "iq")}
        self._count_out = {k: metrics.tally(metrics.STANZAS.labels(domain, "out", k)) for k in ("message", "presence", "iq")}

    def set_allowed_domains(self, allowed_domains: list[str]) -> None:
        self.allowed_domains = frozenset(d.lower() for d in allowed_domains) | {self.domain}

    @property
    def connected(self) -> bool:
        """Authenticated, and known to get traffic (its slot probe came back), so pings come back too."""
        return self.authenticated and self.slotted

    def _getConnection(self):
        return self._reactor.connectTCP(self.host, self.port, self.factory)

    # -- stream events ----------------------------------------------------

    def _connected(self, xs):
        self.generation += 1
        if self.role != "primary":
            self.factory.continueTrying = 0      # the factory's resetDelay() on connect turns retrying back on
        super()._connected(xs)
        _low_latency(xs)
        xs.addObserver(xmlstream.STREAM_ERROR_EVENT, self._on_stream_error)
        self._guard_parser(xs)
        if self.role == "primary":
            (log.info if not self._slotless_count else log.debug)(
                "component {domain}: connected to {host}:{port}, authenticating", domain=self.domain,
                host=self.host, port=self.port)
        else:
            log.debug("component {domain}: spare connection to {host}:{port}, authenticating", domain=self.domain,
                      host=self.host, port=self.port)

    def _authd(self, xs):
        self.authenticated = True
        counters = self._count_out
        raw_send = xs.send

        def send(obj):
            if domish.IElement.providedBy(obj):
                if not obj.getAttribute("from"):
                    obj["from"] = self.domain
                counter = counters.get(obj.name)
                if counter is not None:
                    counter.n += 1
            raw_send(obj)

        xs.send = send
        if self.slot_probe_timeout <= 0:
            self._slot_known(xs, None)
            return
        self._probe = SlotProbe(self.domain, raw_send, self._reactor, self.slot_probe_timeout)
        self._probe.start().addCallbacks(lambda found: self._slot_known(xs, found), lambda f: None)

    def _slot_known(self, xs, found) -> None:
        """The probe ended: serve (handlers up, held stanzas dispatched) or close a slotless connection."""
        self._probe = None
        if xs is not self.xmlstream or not self.authenticated:
            return
        held, self._held = self._held, []
        if found is None and self.slot_probe_timeout > 0:
            self._no_slot(held)
            return
        self.slot = found
        self.slotted = True
        self.slotted_at = self._reactor.seconds()
        self.factory.resetDelay()
        self.factory.delay = self.factory.initialDelay
        tries, self._slotless_count = self._slotless_count, 0
        pinger = getattr(self, "pinger", None)
        if found is None:
            log.info("component {domain}: authenticated", domain=self.domain)
        else:
            if pinger is not None:
                pinger.probe = found.probe
            share = (": it gets all of the domain's traffic" if found.whole_domain
                     else ": one slot of a balanced domain")
            after = f"; after {tries} connection(s) without a slot" if tries else ""
            log.info("component {domain}: authenticated; {role} connection has a slot ({back} of {sent} probes "
                     "came back{share}; pings go from {probe}){after}", domain=self.domain, role=self.role,
                     back=found.back, sent=found.sent, share=share, probe=found.probe, after=after)
        Component._authd(self, xs)
        # Last of all observers: a request no handler took still gets an answer (RFC 6120 §8.2.3).
        xs.addObserver("/iq", self._unanswered, priority=-1000)
        for element, size in held:
            if self.xmlstream is not xs:
                break
            if self._admit(element, size):
                self._dispatch(element)
        self._slot_outcome(True)

    def _no_slot(self, held: list) -> None:
        if self.role == "primary":
            self._slotless_count += 1
            # The factory resets its delay on every TCP connection; the backoff is ours to keep.
            factory = self.factory
            factory.delay = min(factory.initialDelay * 2 ** (self._slotless_count - 1), factory.maxDelay)
            (log.warn if self._slotless_count == 1 else log.debug)(
                "component {domain}: the server accepted the connection but gives it no traffic: none of {n} slot "
                "probes came back within {t:g} s (ejabberd domain_balancing with every slot taken by other "
                "connections; only a new connection can claim a slot that frees later); closing it and retrying "
                "with backoff (up to {max:g} s) until a slot is free{again}", domain=self.domain, n=PROBES,
                t=self.slot_probe_timeout, max=factory.maxDelay,
                again=f" (attempt {self._slotless_count})" if self._slotless_count > 1 else "")
        else:
            # The usual outcome while every process serving the domain is alive.
            log.debug("component {domain}: spare connection got no slot (every slot is taken); closing it",
                      domain=self.domain)
        if held:
            log.warn("component {domain}: {n} stanza(s) arrived on the slotless connection and are dropped",
                     domain=self.domain, n=len(held))
        if self.role == "primary":
            xs = self.xmlstream
            self._slotless = True
            self._footer_sent_on = xs
            xs.sendFooter()
            xs.transport.loseConnection()
        else:
            self.close()
        self._slot_outcome(False)

    def _slot_outcome(self, got: bool) -> None:
        if not self.slot_result.called:
            self.slot_result.callback(got)

    def close(self, timeout: float = 5.0) -> defer.Deferred:
        """
        End the stream cleanly: no reconnect, the stream footer, and a Deferred
        that fires once TCP has closed, that is after everything written before
        (the goodbye presences) has left. Without this, reactor shutdown may
        close the socket with data still buffered.
        """
        self.factory.stopTrying()
        self._stopping = True
        xs = self.xmlstream
        if xs is None or xs.transport is None:
            connection = getattr(self, "_connection", None)
            if connection is not None:
                connection.disconnect()          # still connecting: give up the attempt
            return defer.succeed(None)
        d = defer.Deferred()
        self._closing.append(d)
        if self._footer_sent_on is not xs:
            self._footer_sent_on = xs
            xs.sendFooter()
            xs.transport.loseConnection()
        return d.addTimeout(timeout, self._reactor).addErrback(lambda f: None)

    def _disconnected(self, reason):
        was_up = self.authenticated
        had_slot = self.slotted
        self.authenticated = False
        self.slotted = False
        self.slot = None
        self._held = []
        if self._probe is not None:
            probe, self._probe = self._probe, None
            probe.cancel()
        closing, self._closing = self._closing, []
        for d in closing:
            d.callback(None)
        super()._disconnected(reason)
        if self.role != "primary":
            self.factory.stopTrying()
            self._slot_outcome(False)
            if had_slot and self.on_gone is not None:
                self.on_gone(self)
        slotless, self._slotless = self._slotless, False
        if self._stopping:
            (log.info if self.role == "primary" or had_slot else log.debug)(
                "component {domain}: {role} stream closed", domain=self.domain, role=self.role)
        elif self.role != "primary":
            log.warn("component {domain}: spare stream lost ({reason}); not reconnected (a later spare takes "
                     "whatever slot is free then)", domain=self.domain, reason=reason.getErrorMessage())
        elif slotless:
            log.debug("component {domain}: slotless connection closed", domain=self.domain)
        elif self.fatal is None and self.running:
            log.warn("component {domain}: stream lost ({reason}); reconnecting with backoff",
                     domain=self.domain, reason=reason.getErrorMessage() if was_up else
                     "closed before authentication: " + reason.getErrorMessage())

    def _on_stream_error(self, failure):
        exc = failure.value
        if not isinstance(exc, StreamError):
            log.warn("component {domain}: stream error: {error}", domain=self.domain,
                     error=failure.getErrorMessage())
            return
        if exc.condition in FATAL_STREAM_ERRORS:
            self.fatal = FatalStreamError(self.domain, exc.condition, exc.text)
            self.factory.stopTrying()
            log.critical("{message}", message=str(self.fatal))
            self.on_fatal(self.fatal)
        elif exc.condition == "conflict":
            self.conflict = True
            if self.role != "primary":
                return
            log.warn("component {domain}: the server says another connection serves this domain "
                     "(<conflict/>: a stale session of ours after a broken link, or a second process "
                     "for a server that allows one connection per domain); retrying with backoff",
                     domain=self.domain)
        else:
            log.warn("component {domain}: stream error <{condition}/> {text}", domain=self.domain,
                     condition=exc.condition, text=exc.text or "")

    # -- inbound filter ---------------------------------------------------

    def _guard_parser(self, xs) -> None:
        """
        Measure each stanza in bytes as the parser reads it and filter stanzas
        before dispatch. Expat's byte index at a stanza's first and last tag gives
        its size without serialising it again.
        """
        stream = xs.stream
        parser = getattr(stream, "parser", None)
        start = [0]
        if parser is not None:
            on_start = parser.StartElementHandler

            def start_element(name, attrs):
                if stream.documentStarted and stream.currElem is None:
                    start[0] = parser.CurrentByteIndex
                on_start(name, attrs)

            parser.StartElementHandler = start_element

        dispatch = stream.ElementEvent
        self._dispatch = dispatch

        def on_element(element):
            if parser is not None:
                size = parser.CurrentByteIndex - start[0]
            else:
                size = len(element.toXml().encode("utf-8"))
            if element.name == "message" and is_probe(element):
                # Slot probes, ours or another connection's: never seen by a handler.
                if self._probe is not None:
                    self._probe.received(element)
                return
            if self.authenticated and not self.slotted:
                # Users' stanzas that arrive while the probe runs wait for the handlers.
                self._held.append((element, size))
                return
            if self._admit(element, size):
                dispatch(element)

        stream.ElementEvent = on_element

    def _admit(self, element: domish.Element, size: int) -> bool:
        counter = self._count_in.get(element.name)
        if counter is not None:
            counter.n += 1
        if element.name not in ("message", "presence", "iq") or not self.authenticated:
            return True
        stype = element.getAttribute("type")
        if size > self.size_limit:
            self.refuse(element, "policy-violation",
                        f"stanza of {size} bytes exceeds this gateway's limit of {self.size_limit} bytes",
                        "modify")
            return False
        sender = parse_jid(element.getAttribute("from"))
        if sender is None or not element.getAttribute("to"):
            return False
        if element.name == "iq" and stype in ("get", "set") and sum(1 for _ in element.elements()) != 1:
            # RFC 6120 §8.2.3: exactly one payload. Refused here, before any
            # handler: wokkel's match on the first child, and would answer a
            # two-payload request as if the second were not there. Prosody
            # checks this only for its own clients, not for other servers'.
            self.refuse(element, "bad-request", "an IQ get or set carries exactly one payload element", "modify")
            return False
        if sender.host.lower() in self.allowed_domains:
            return True
        if element.name == "iq" and stype in ("result", "error"):
            return True
        if element.name == "iq" and any(c.uri == NS_REGISTER for c in element.elements()):
            self.refuse(element, "forbidden", f"users of {sender.host} may not register here")
        else:
            self.refuse(element, "service-unavailable")
        return False

    def _unanswered(self, iq: domish.Element) -> None:
        """
        A get or set no handler took: the entity must answer with an error, or
        the client waits for ever. (One without exactly one payload never gets
        here: ``_admit`` answers it ``bad-request`` before any handler.) Room
        administration and configuration we do not do is
        ``feature-not-implemented``; anything else (vCards, last activity,
        private storage...) ``service-unavailable``.
        """
        if getattr(iq, "handled", False) or iq.getAttribute("type") not in ("get", "set"):
            return
        if not iq.getAttribute("from") or not iq.getAttribute("to"):
            return
        child = next(iq.elements(), None)
        if child is not None and child.uri in NOT_IMPLEMENTED_NAMESPACES:
            self.refuse(iq, "feature-not-implemented", None, "cancel")
        else:
            self.refuse(iq, "service-unavailable")

    def send_serialized(self, xml: str, kind: str) -> None:
        """Write a stanza already serialised (hot paths); counted like any other."""
        counter = self._count_out.get(kind)
        if counter is not None:
            counter.n += 1
        xs = self.xmlstream
        if self.authenticated and xs is not None and xs.transport is not None and not xs.rawDataOutFn:
            # Straight to the transport: the layers in between only look for domish elements.
            xs.transport.write(xml.encode("utf-8"))
        else:
            self.send(xml)          # queued by wokkel until the stream is up, or logged

    def unsent(self) -> int:
        """Bytes written on this stream that the server has not taken yet (room pacing waits on it)."""
        xs = self.xmlstream
        if xs is None or xs.transport is None:
            return 0
        return unsent_bytes(xs.transport)

    def refuse(self, element: domish.Element, condition: str, text: str | None = None,
               error_type: str | None = None) -> None:
        """Answer a stanza with an error (never an error to an error)."""
        if element.getAttribute("type") == "error" or element.name == "presence":
            return
        if element.name == "iq" and element.getAttribute("type") not in ("get", "set"):
            return
        self.count_error(condition)
        self.send(error_reply(element, condition, text, error_type))

    def count_error(self, condition: str) -> None:
        metrics.ERRORS.labels(self.domain, condition).inc()
