"""
Request body limits enforced while the request arrives, not after.

twisted.web reads a whole request body before any resource sees it, and
spools one announced larger than 100 kB to a temporary file (on the reactor
thread). So a resource checking the size in ``render`` is too late: a caller
announcing ``Content-Length: 1000000000`` or streaming an endless chunked body
has already cost the gateway its disk and its reactor. Here the request itself
knows the limit of the path it is for (the longest configured prefix), and

* refuses a declared length over the limit as soon as the headers are in: 413
  and the connection closed, before one byte of the body is read (and no
  ``100 Continue`` is sent to a client that asked for one);
* counts the bytes of a chunked (or any) body as they arrive and, past the
  limit, answers 413 and closes the connection;
* keeps the body in memory (it is bounded), never in a temporary file;
* counts every body against one budget shared by all requests of the site
  (``web.max_bodies_in_flight``): each body under its limit, held open on
  many connections (one byte a minute keeps one alive), would otherwise add
  up without bound. A body past the budget is answered 503 and its connection
  closed; a body leaves the budget when its request ends or its connection goes.

Twisted's HTTP channel already bounds the head of a request (500 headers,
16 KiB for the request line and all headers together: 400 and closed past
either), so only the body needs this.
"""

from __future__ import annotations

from io import BytesIO

from prometheus_client import Counter
from twisted.logger import Logger
from twisted.web import http, server

from gateway import metrics

log = Logger(namespace="gateway.web.limits")

#: Bodies of requests to paths no mount claims (/healthz, /metrics, /files are GETs).
DEFAULT_MAX_BODY = 64 * 1024
#: Bytes of bodies all requests together may hold (web.max_bodies_in_flight).
DEFAULT_IN_FLIGHT = 32 * 1024 * 1024

REFUSED = Counter("xmpp_gateway_web_refused", "HTTP requests refused while they arrived (413: body too large).",
                  ["reason"], registry=metrics.REGISTRY)


class BodyLimits:
    """The most body bytes a request may carry, by path prefix (the longest matching prefix wins)."""

    def __init__(self, default: int = DEFAULT_MAX_BODY):
        self.default = default
        self._prefixes: list[tuple[bytes, int]] = []

    def set(self, prefix: bytes, limit: int) -> None:
        self._prefixes = sorted([(p, n) for p, n in self._prefixes if p != prefix] + [(prefix, limit)],
                                key=lambda item: -len(item[0]))

    def limit_for(self, path: bytes) -> int:
        path = path.split(b"?", 1)[0]
        for prefix, limit in self._prefixes:
            if path.startswith(prefix):
                return limit
        return self.default


def _too_large(limit: int) -> bytes:
    body = f"payload too large: this address takes at most {limit} bytes\n".encode()
    return (b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _busy() -> bytes:
    body = b"busy: too many request bodies are arriving at once; retry later\n"
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Retry-After: 10\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _media_type(value: bytes) -> bytes:
    """``type/subtype`` of a Content-Type value, lower case (what email's get_content_type gives for valid ones)."""
    return value.split(b";", 1)[0].strip().lower()


class LimitedRequest(server.Request):
    """A site request that refuses its body past the limit of its path (see the module's docstring)."""

    _limit: int | None = None
    _received = 0
    _refused = False
    #: Bytes of this body counted in the site's budget (given back once, when the request ends).
    _held = 0
    _site = None

    def gotLength(self, length: int | None) -> None:
        self._site = self.channel.site
        limits: BodyLimits = getattr(self._site, "body_limits", None) or BodyLimits()
        self._limit = limits.limit_for(getattr(self.channel, "_path", b"") or b"")
        self.content = BytesIO()
        if length is not None and length > self._limit:
            # Refused from the headers: no 100 Continue, and the body is never read.
            self.requestHeaders.removeHeader(b"expect")
            self._refuse("declared")

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._limit is not None and self._received > self._limit:
            self._refuse("streamed")
            return
        if self._site is not None and not self._site.hold(len(data)):
            self._refuse("busy", _busy())
            return
        self._held += len(data)
        self.content.write(data)

    #: Whether POST forms become ``request.args`` (the site's setting, as Twisted has it).
    _parse_forms = True

    def __init__(self, *args, **kwargs):
        self._args = {}
        super().__init__(*args, **kwargs)
        # Twisted's form parsing runs every POST's Content-Type through
        # ``email.message.EmailMessage`` (header registry, policy objects) just
        # to compare it with two strings: about 9 % of the reactor's time under
        # a webhook load. Off here; ``process`` parses the same forms cheaply.
        self._parse_forms, self._parsePOSTFormSubmission = self._parsePOSTFormSubmission, False

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return          # answered already; the connection is closing
        ctype = self.requestHeaders.getRawHeaders(b"content-type")
        if command == b"POST" and ctype and _media_type(ctype[0]) == b"multipart/form-data":
            self._parsePOSTFormSubmission = self._parse_forms   # rare here: Twisted's own parser, as before
        super().requestReceived(command, path, version)

    #: A urlencoded POST body not yet parsed into ``args`` (see ``process``).
    _form: bytes | None = None

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        """
        ``request.args`` as Twisted makes them (the query's arguments, then a
        urlencoded POST body's), the body's parsed when ``args`` is first read:
        the webhooks read their body themselves (a signature covers it as
        sent), so parsing it here too was a second parse of every webhook.
        """
        form = self._form
        if form is not None:
            self._form = None
            self._args.update(http.parse_qs(form, 1))
        return self._args

    @args.setter
    def args(self, value: dict) -> None:
        self._args = value

    def process(self):
        """
        The Content-Type compared without the email package: the media type
        before any parameter, without case or spaces; a urlencoded POST body
        becomes part of ``args`` when they are read.
        """
        if self.method == b"POST" and self._parse_forms and not self._parsePOSTFormSubmission:
            ctype = self.requestHeaders.getRawHeaders(b"content-type")
            if ctype and _media_type(ctype[0]) == b"application/x-www-form-urlencoded":
                body = self.content.read()
                self.content.seek(0, 0)
                if body:
                    self._form = body
        return super().process()

    def _release(self) -> None:
        held, self._held = self._held, 0
        if held and self._site is not None:
            self._site.release(held)

    def finish(self):
        self._release()
        return super().finish()

    def connectionLost(self, reason) -> None:
        self._release()
        super().connectionLost(reason)

    def _refuse(self, how: str, answer: bytes | None = None) -> None:
        self._refused = True
        self.content = BytesIO()
        self._release()
        REFUSED.labels(f"body-{how}").inc()
        channel = self.channel
        peer = channel.transport.getPeer() if channel.transport else None
        if how == "busy":
            log.warn("refused a request body from {peer}: {held} bytes of bodies already arriving",
                     peer=getattr(peer, "host", "?"), held=self._site.in_flight)
        else:
            log.warn("refused a request body over {limit} bytes ({how}) from {peer}", limit=self._limit, how=how,
                     peer=getattr(peer, "host", "?"))
        # Nothing more is parsed on this connection: the answer goes out as is,
        # then the connection closes (whatever the peer still sends is dropped).
        channel.persistent = False
        channel.transport.write(answer or _too_large(self._limit))
        channel.dataReceived = channel.rawDataReceived = channel.lineReceived = lambda data: None
        channel.transport.loseConnection()


class LimitedSite(server.Site):
    """A Site whose requests enforce ``body_limits`` while they arrive."""

    requestFactory = LimitedRequest

    def __init__(self, resource, body_limits: BodyLimits | None = None, in_flight_limit: int = DEFAULT_IN_FLIGHT,
                 **kwargs):
        super().__init__(resource, **kwargs)
        self.body_limits = body_limits or BodyLimits()
        self.in_flight_limit = in_flight_limit
        #: Bytes of request bodies held now, over every connection.
        self.in_flight = 0

    def hold(self, n: int) -> bool:
        """Count ``n`` more body bytes, or False when that would pass the budget."""
        if self.in_flight + n > self.in_flight_limit:
            return False
        self.in_flight += n
        return True

    def release(self, n: int) -> None:
        self.in_flight = max(0, self.in_flight - n)
