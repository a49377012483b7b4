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
* keeps the body in memory (it is bounded), never in a temporary file.

Twisted's HTTP channel already bounds the head of a request (500 headers,
16 KiB for the request line and all headers together: 400 and closed past
either), so only the body needs this.
"""

from __future__ import annotations

from io import BytesIO

from prometheus_client import Counter
from twisted.logger import Logger
from twisted.web import server

from gateway import metrics

log = Logger(namespace="gateway.web.limits")

#: Bodies of requests to paths no mount claims (/healthz, /metrics, /files are GETs).
DEFAULT_MAX_BODY = 64 * 1024

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


class LimitedRequest(server.Request):
    """A site request that refuses its body past the limit of its path (see the module's docstring)."""

    _limit: int | None = None
    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        limits: BodyLimits = getattr(self.channel.site, "body_limits", None) or BodyLimits()
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
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return          # answered already; the connection is closing
        super().requestReceived(command, path, version)

    def _refuse(self, how: str) -> None:
        self._refused = True
        self.content = BytesIO()
        REFUSED.labels(f"body-{how}").inc()
        channel = self.channel
        peer = channel.transport.getPeer() if channel.transport else None
        log.warn("refused a request body over {limit} bytes ({how}) from {peer}", limit=self._limit, how=how,
                 peer=getattr(peer, "host", "?"))
        # Nothing more is parsed on this connection: the answer goes out as is,
        # then the connection closes (whatever the peer still sends is dropped).
        channel.persistent = False
        channel.transport.write(_too_large(self._limit))
        channel.dataReceived = channel.rawDataReceived = channel.lineReceived = lambda data: None
        channel.transport.loseConnection()


class LimitedSite(server.Site):
    """A Site whose requests enforce ``body_limits`` while they arrive."""

    requestFactory = LimitedRequest

    def __init__(self, resource, body_limits: BodyLimits | None = None, **kwargs):
        super().__init__(resource, **kwargs)
        self.body_limits = body_limits or BodyLimits()
