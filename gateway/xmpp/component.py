"""
One XEP-0114 component stream on wokkel's component service.

What wokkel does not do and this adds: fatal stream errors (a wrong secret, an
unknown domain, a second connection) end with one clear error instead of an
endless reconnect loop; reconnect delays come from config; stanzas over the
size limit are refused with <policy-violation/> before any handler sees them;
users of domains not allowed never reach a handler; every stanza is counted.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from twisted.internet import reactor as default_reactor
from twisted.logger import Logger
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish import domish

from gateway import metrics
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
                 reactor=default_reactor):
        super().__init__(host, port, domain, secret)
        self.domain = domain
        self.allowed_domains = frozenset(d.lower() for d in allowed_domains) | {domain}
        self.size_limit = settings["stanza_size_limit"]
        self.on_fatal = on_fatal
        self._reactor = reactor
        self.factory.initialDelay = settings["reconnect_initial_delay"]
        self.factory.maxDelay = settings["reconnect_max_delay"]
        self.factory.factor = 2.0
        self.factory.jitter = 0.2
        self.factory.delay = self.factory.initialDelay
        self.fatal: FatalStreamError | None = None
        self.authenticated = False
        self._closing: list[defer.Deferred] = []
        self._stopping = False
        self._count_in = {k: metrics.STANZAS.labels(domain, "in", k) for k in ("message", "presence", "iq")}
        self._count_out = {k: metrics.STANZAS.labels(domain, "out", k) for k in ("message", "presence", "iq")}

    @property
    def connected(self) -> bool:
        return self.authenticated

    def _getConnection(self):
        return self._reactor.connectTCP(self.host, self.port, self.factory)

    # -- stream events ----------------------------------------------------

    def _connected(self, xs):
        super()._connected(xs)
        xs.addObserver(xmlstream.STREAM_ERROR_EVENT, self._on_stream_error)
        self._guard_parser(xs)
        log.info("component {domain}: connected to {host}:{port}, authenticating", domain=self.domain,
                 host=self.host, port=self.port)

    def _authd(self, xs):
        self.factory.resetDelay()
        self.factory.delay = self.factory.initialDelay
        self.authenticated = True
        counters = self._count_out
        raw_send = xs.send

        def send(obj):
            if domish.IElement.providedBy(obj):
                if not obj.getAttribute("from"):
                    obj["from"] = self.domain
                counter = counters.get(obj.name)
                if counter is not None:
                    counter.inc()
            raw_send(obj)

        xs.send = send
        log.info("component {domain}: authenticated", domain=self.domain)
        super()._authd(xs)

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
            return defer.succeed(None)
        d = defer.Deferred()
        self._closing.append(d)
        xs.sendFooter()
        xs.transport.loseConnection()
        return d.addTimeout(timeout, self._reactor).addErrback(lambda f: None)

    def _disconnected(self, reason):
        was_up = self.authenticated
        self.authenticated = False
        closing, self._closing = self._closing, []
        for d in closing:
            d.callback(None)
        super()._disconnected(reason)
        if self._stopping:
            log.info("component {domain}: stream closed", domain=self.domain)
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

        def on_element(element):
            if parser is not None:
                size = parser.CurrentByteIndex - start[0]
            else:
                size = len(element.toXml().encode("utf-8"))
            if self._admit(element, size):
                dispatch(element)

        stream.ElementEvent = on_element

    def _admit(self, element: domish.Element, size: int) -> bool:
        counter = self._count_in.get(element.name)
        if counter is not None:
            counter.inc()
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
        if sender.host.lower() in self.allowed_domains:
            return True
        if element.name == "iq" and stype in ("result", "error"):
            return True
        if element.name == "iq" and any(c.uri == NS_REGISTER for c in element.elements()):
            self.refuse(element, "forbidden", f"users of {sender.host} may not register here")
        else:
            self.refuse(element, "service-unavailable")
        return False

    def send_serialized(self, xml: str, kind: str) -> None:
        """Write a stanza already serialised (hot paths); counted like any other."""
        counter = self._count_out.get(kind)
        if counter is not None:
            counter.inc()
        self.send(xml)

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
