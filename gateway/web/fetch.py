"""
HTTP transfers of files for users: fetching a file a user sent (an XEP-0066
URL, to attach it to a mail or re-host an MMS picture) and putting a file into
an XEP-0363 upload slot.

Every fetch is bounded: at most ``max_size`` bytes are read (a larger
Content-Length is refused before the body, a body that grows past it is cut
off), the whole transfer (resolution, connect, redirects, body) takes at most
``timeout`` seconds, and only ``http``/``https`` URLs are taken. A URL is an
address the user (or a provider's webhook) chose, so it must not reach the
gateway's own network: unless ``allow_private`` is set, the host is resolved
first and *every* address it resolves to must be a global one (no loopback,
private, link-local, reserved or multicast address). The connection then goes
to the address that was checked, never to the name again, so a DNS answer that
changes between the check and the connect (DNS rebinding) gains nothing; TLS
still verifies the certificate against the name. Redirects are followed (at
most ``MAX_REDIRECTS``), each target checked the same way.

Everything runs on the reactor (twisted.web.client.Agent, a bounded body
reader); only the name resolution (getaddrinfo) runs in a thread.
"""

from __future__ import annotations

import io
import ipaddress
import mimetypes
import socket
import urllib.parse
from dataclasses import dataclass

from twisted.internet import defer, error as ierror, protocol, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python import failure
from twisted.web.client import Agent, FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, UNKNOWN_LENGTH
from zope.interface import implementer

from gateway.model import GatewayError

log = Logger(namespace="gateway.web.fetch")

MAX_REDIRECTS = 3
#: Name lookups of fetches running at once (each holds one of the reactor's ~10 threads for as long
#: as the user's DNS takes, whatever the fetch's time-out): the others wait, within that time-out.
MAX_LOOKUPS = 3
#: Transfers (GET bodies) at once, over all users: each holds up to ``max_size`` bytes while it
#: arrives, so this bounds the memory users' files can take at once; the others wait in turn,
#: within their own time-out.
MAX_FETCHES = 4
USER_AGENT = b"xmpp-gateway (file transfer)"
#: Characters left as they are when a URL with spaces or non-ASCII is made sendable.
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"


class FetchRefused(GatewayError):
    """The URL is not one the gateway fetches (its scheme, or an address it must not reach)."""

    condition = "not-allowed"
    error_type = "cancel"


class FileTooLarge(GatewayError):
    condition = "policy-violation"
    error_type = "modify"


class FetchFailed(GatewayError):
    """The server did not hand the file over (an HTTP error, no connection, too slow)."""

    condition = "item-not-found"
    error_type = "cancel"


@dataclass
class Fetched:
    url: str
    data: bytes
    content_type: str
    #: The file's name, from the URL's last path segment.
    name: str


def is_public(address: str) -> bool:
    """Whether an IP address is one on the Internet (not loopback, private, link-local, reserved, multicast)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def name_of(url: str, content_type: str | None = None) -> str:
    """The file name a URL ends in (``report.pdf``), or one made from its type."""
    path = urllib.parse.urlsplit(url).path
    name = urllib.parse.unquote(path.rstrip("/").rpartition("/")[2])
    if not name:
        name = "file" + (mimetypes.guess_extension((content_type or "").partition(";")[0].strip()) or ".bin")
    return name


@implementer(IAgentEndpointFactory)
class _Pinned:
    """Connect to the address that was checked, whatever the URL's host resolves to by now."""

    def __init__(self, reactor, address: str, port: int, tls_host: str | None, timeout: float, trust_root=None):
        self.trust_root = trust_root
        self.reactor = reactor
        self.address = address
        self.port = port
        self.tls_host = tls_host
        self.timeout = timeout

    def endpointForURI(self, uri):
        cls = TCP6ClientEndpoint if ":" in self.address else TCP4ClientEndpoint
        endpoint = cls(self.reactor, self.address, self.port, timeout=max(1, int(self.timeout)))
        if self.tls_host is not None:
            # The certificate is checked against the URL's name, not the address connected to.
            options = (optionsForClientTLS(self.tls_host) if self.trust_root is None
                       else optionsForClientTLS(self.tls_host, trustRoot=self.trust_root))
            endpoint = wrapClientTLS(options, endpoint)
        return endpoint


class _Capped(protocol.Protocol):
    """Reads a response body into memory, but never more than ``limit`` bytes."""

    def __init__(self, limit: int, done: defer.Deferred, url: str):
        self.limit = limit
        self.done = done
        self.url = url
        self.parts: list[bytes] = []
        self.size = 0
        self.over = False

    def dataReceived(self, data: bytes) -> None:
        if self.over:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.over = True
            self.parts = []
            self.transport.stopProducing()
            return
        self.parts.append(data)

    def connectionLost(self, reason) -> None:
        if self.done.called:
            return
        if self.over:
            self.done.errback(FileTooLarge(f"the file at {self.url} is larger than this gateway's limit of "
                                           f"{self.limit} bytes"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(FetchFailed(f"the file at {self.url} was cut off: {reason.getErrorMessage()}"))


class Fetcher:
    """Bounded HTTP GETs and PUTs (see the module's docstring); one per gateway process."""

    def __init__(self, reactor, max_size: int, timeout: float, allow_private: bool, resolve=None,
                 trust_root=None):
        self.reactor = reactor
        #: CA certificate(s) for https (twisted.internet.ssl.Certificate); default: the system's.
        self.trust_root = trust_root
        self.max_size = max_size
        self.timeout = timeout
        self.allow_private = allow_private
        #: host, port -> Deferred[list of addresses]; getaddrinfo in a thread by default.
        self._resolve = resolve or self._getaddrinfo
        self._lookups = defer.DeferredSemaphore(MAX_LOOKUPS)
        self._transfers = defer.DeferredSemaphore(MAX_FETCHES)

    def _getaddrinfo(self, host: str, port: int) -> defer.Deferred:
        def lookup():
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
            return list(dict.fromkeys(info[4][0] for info in infos))
        # A lookup whose fetch timed out (cancelled) still runs to its end: its slot is freed then, not
        # before, or cancelled lookups would take every thread after all.
        acquired = self._lookups.acquire()
        result = defer.Deferred(lambda _: acquired.cancel())

        def ended(outcome):
            self._lookups.release()
            if not result.called:
                if isinstance(outcome, failure.Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)

        def start(_):
            threads.deferToThread(lookup).addBoth(ended)     # not returned: a cancel must not reach it

        acquired.addCallbacks(start, lambda f: f.trap(defer.CancelledError) and None)
        return result

    # -- one request ------------------------------------------------------

    @defer.inlineCallbacks
    def _target(self, url: str, allow_private: bool):
        """(sendable URL bytes, pinned endpoint factory) for ``url``, after every check."""
        if len(url) > 4096:
            raise FetchRefused("that URL is longer than 4096 characters")
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            raise FetchRefused(f"{url} is not a URL the gateway can fetch")
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise FetchRefused(f"only http and https URLs can be fetched, not {url}")
        if parts.username or parts.password:
            raise FetchRefused("URLs with a user name or password are not fetched")
        host = parts.hostname
        port = port or (443 if scheme == "https" else 80)
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            try:
                addresses = yield self._resolve(host, port)
            except (OSError, UnicodeError) as e:
                raise FetchFailed(f"{host} cannot be resolved ({e})")
        if not addresses:
            raise FetchFailed(f"{host} has no address")
        if not allow_private:
            for address in addresses:
                if not is_public(address):
                    # Every address, not just the first: a name with one public and one
                    # private address must not be a way in (the connect could pick either).
                    named = host if address == host else f"{host} ({address})"
                    raise FetchRefused(f"{named} is a private or loopback address; this gateway does not fetch "
                                       "from those (attachments.fetch_allow_private)")
        sendable = urllib.parse.quote(url, safe=_URL_SAFE).encode("ascii")
        tls_host = host if scheme == "https" else None
        return sendable, _Pinned(self.reactor, addresses[0], port, tls_host, self.timeout, self.trust_root)

    @defer.inlineCallbacks
    def _get(self, url: str, limit: int, allow_private: bool):
        for _ in range(MAX_REDIRECTS + 1):
            sendable, pinned = yield self._target(url, allow_private)
            agent = Agent.usingEndpointFactory(self.reactor, pinned)
            try:
                response = yield agent.request(b"GET", sendable, Headers({b"user-agent": [USER_AGENT]}))
            except (ierror.ConnectError, ierror.DNSLookupError) as e:
                raise FetchFailed(f"cannot connect to {urllib.parse.urlsplit(url).hostname}: {e}")
            except defer.CancelledError:
                raise
            except Exception as e:
                raise FetchFailed(f"fetching {url} failed: {type(e).__name__}")
            if response.code in (301, 302, 303, 307, 308):
                location = response.headers.getRawHeaders(b"location", [b""])[0].decode("latin-1")
                response.deliverBody(_Discard())
                if not location:
                    raise FetchFailed(f"{url} redirects nowhere")
                url = urllib.parse.urljoin(url, location)
                allow_private = self.allow_private     # an allowance for one URL is not one for its redirects
                continue
            if response.code != 200:
                response.deliverBody(_Discard())
                raise FetchFailed(f"the server of {url} answered HTTP {response.code}")
            if response.length is not UNKNOWN_LENGTH and response.length > limit:
                response.deliverBody(_Discard())
                raise FileTooLarge(f"the file at {url} has {response.length} bytes; this gateway's limit is "
                                   f"{limit} bytes")
            done = defer.Deferred(lambda d: capped.transport.stopProducing() if capped.transport else None)
            capped = _Capped(limit, done, url)
            response.deliverBody(capped)
            data = yield done
            ctype = response.headers.getRawHeaders(b"content-type", [b""])[0].decode("latin-1")
            ctype = ctype.partition(";")[0].strip().lower() or mimetypes.guess_type(name_of(url))[0] or \
                "application/octet-stream"
            return Fetched(url=url, data=data, content_type=ctype, name=name_of(url, ctype))
        raise FetchFailed(f"more than {MAX_REDIRECTS} redirects fetching that file")

    def _bounded(self, d: defer.Deferred, what: str) -> defer.Deferred:
        def timed_out(result, timeout):
            # Whatever the cancelled transfer failed with (a CancelledError, wrapped or not): too slow.
            return failure.Failure(FetchFailed(f"{what} took longer than {timeout:g} s", "remote-server-timeout"))
        return d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=timed_out)

    def fetch(self, url: str, max_size: int | None = None, allow_private: bool | None = None) -> defer.Deferred:
        """
        GET ``url``: a Deferred firing with a ``Fetched``, or failing with
        FetchRefused, FileTooLarge or FetchFailed (GatewayErrors whose text
        the user can read). ``allow_private`` True: the URL is known to be
        the operator's own (an XEP-0363 service of an allowed domain).
        """
        limit = min(max_size or self.max_size, self.max_size)
        private = self.allow_private or bool(allow_private)
        return self._bounded(self._transfers.run(self._get, url, limit, private), f"fetching {url}")

    @defer.inlineCallbacks
    def _put(self, url: str, data: bytes, headers: dict[str, str], allow_private: bool):
        sendable, pinned = yield self._target(url, allow_private)
        agent = Agent.usingEndpointFactory(self.reactor, pinned)
        raw = Headers({b"user-agent": [USER_AGENT]})
        for k, v in headers.items():
            raw.setRawHeaders(k.encode("latin-1"), [v.encode("latin-1")])
        try:
            response = yield agent.request(b"PUT", sendable, raw, FileBodyProducer(io.BytesIO(data)))
        except defer.CancelledError:
            raise
        except Exception as e:
            raise FetchFailed(f"uploading to {urllib.parse.urlsplit(url).hostname} failed: {type(e).__name__}")
        response.deliverBody(_Discard())
        if response.code not in (200, 201):
            raise FetchFailed(f"the upload server answered HTTP {response.code}")

    def put(self, url: str, data: bytes, headers: dict[str, str], allow_private: bool = False) -> defer.Deferred:
        """PUT ``data`` to ``url`` (an XEP-0363 slot), within the same time bound."""
        return self._bounded(self._put(url, data, headers, allow_private or self.allow_private), "the upload")


class _Discard(protocol.Protocol):
    """Takes a body nobody reads and closes the connection at once, whatever its size."""

    def connectionMade(self):
        self.transport.stopProducing()

    def connectionLost(self, reason):
        pass


__all__ = ["Fetcher", "Fetched", "FetchRefused", "FileTooLarge", "FetchFailed", "is_public", "name_of"]
