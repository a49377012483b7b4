"""
XEP-0363 HTTP File Upload, as a client: files from the networks (email
attachments, MMS media) go to the user's own server, so they live where the
user's other files do and the client shows them like any upload.

- The upload service of a user's domain is found with service discovery:
  disco#info on the domain itself, then on its disco#items (likeliest names
  first: ``upload.``, ``share.``, ...) until one has the
  ``urn:xmpp:http:upload:0`` feature; its ``max-file-size`` comes from the
  XEP-0128 form in that disco#info. What was found (or that nothing was) is
  cached per domain.
- Slots are requested from one of the component's own JIDs (the connection's
  probe JID, which the server routes back to this connection even behind
  ejabberd's balancing): a component may not put a user's JID in ``from``
  (Prosody closes the stream), and its own JIDs are allowed to upload
  (docs/reference: mod_http_file_share's default access covers components).
- Only for users of ``gateway.allowed_domains``: the operator's own servers.
  A remote server's slot URL would make the gateway PUT wherever that server
  says, and its service would refuse a foreign component anyway.
- The PUT goes through gateway.web.fetch's bounded client; private addresses
  are allowed there, the service being the operator's own server.
- Anything that fails (no service, too large for it, a slot refused, a PUT
  that fails or takes too long) answers None or fails: the bridge then serves
  the file from ``/files/`` (Bridge.offer_file), so no file is lost to it.

Discovery also requests one slot nobody fills, to learn the origin of the
service's URLs: a body that is only a URL of that origin is a file the user
uploaded (``is_upload_url``), sent on as a file rather than as text.
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish
from wokkel import generic
from wokkel.subprotocols import XMPPHandler
from zope.interface import implementer

from gateway.interfaces import IFileUpload
from gateway.web.files import plain_type, safe_name
from gateway.xmpp.stanzas import parse_jid

log = Logger(namespace="gateway.xmpp.upload")

NS_UPLOAD = "urn:xmpp:http:upload:0"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DATA = "jabber:x:data"
#: XEP-0363 §5: the only headers a client may send along with the PUT.
PUT_HEADERS = {"authorization": "Authorization", "cookie": "Cookie", "expires": "Expires"}
#: disco#items looked at per domain: a server lists its components there, and asking each costs an IQ.
MAX_ITEMS = 20
LIKELY = ("upload.", "share.", "http.", "file", "xfer.")


@dataclass
class UploadService:
    jid: str
    max_size: int | None
    #: ``scheme://host:port`` of the URLs its slots hand out.
    origins: set[str] = field(default_factory=set)
    #: ``scheme://host:port/first-segment/`` of those URLs: only URLs under one are the service's files
    #: (the same web server has other pages, some meant for local addresses only).
    prefixes: set[str] = field(default_factory=set)


def file_prefix(url: str) -> str | None:
    """
    Where the files of a slot's GET URL live: its origin and first path segment
    (``https://host:443/file_share/``; the whole path when it has one segment
    only); None for a URL with ``.``/``..`` segments, plain or percent-encoded,
    which a web server may resolve to another page.
    """
    origin = origin_of(url)
    if origin is None:
        return None
    path = urllib.parse.urlsplit(url).path
    segments = path.split("/")
    if any(urllib.parse.unquote(seg) in (".", "..") or "\\" in urllib.parse.unquote(seg) for seg in segments):
        return None
    head, sep, _ = path.lstrip("/").partition("/")
    return f"{origin}/{head}/" if sep else f"{origin}{path}"


def origin_of(url: str) -> str | None:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return f"{parts.scheme}://{parts.hostname.lower()}:{port or (443 if parts.scheme == 'https' else 80)}"


class _Get(generic.Request):
    """An IQ get with one payload, answered within ``timeout`` or failed."""

    def __init__(self, recipient: str, sender: str, payload: domish.Element, timeout: float):
        super().__init__(recipient=parse_jid(recipient), sender=parse_jid(sender), stanzaType="get")
        self.payload = payload
        self.timeout = timeout

    def toElement(self):
        element = super().toElement()
        element.addChild(self.payload)
        return element


def _has_upload(query: domish.Element) -> tuple[bool, int | None]:
    """(offers XEP-0363, its max-file-size) from a disco#info answer."""
    features = {f.getAttribute("var") for f in query.elements(NS_DISCO_INFO, "feature")}
    if NS_UPLOAD not in features:
        return False, None
    for form in query.elements(NS_DATA, "x"):
        values: dict[str, str] = {}
        for f in form.elements(NS_DATA, "field"):
            value = next(f.elements(NS_DATA, "value"), None)
            if value is not None:
                values[f.getAttribute("var") or ""] = str(value).strip()
        if values.get("FORM_TYPE") == NS_UPLOAD:
            size = values.get("max-file-size", "")
            return True, int(size) if size.isdecimal() and size.isascii() and len(size) < 20 else None
    return True, None


@implementer(IFileUpload)
class UploadHandler(XMPPHandler):
    POSITIVE_TTL = 3600.0
    #: A domain without a (working) service is asked again after this long.
    NEGATIVE_TTL = 300.0

    def __init__(self, stream, fetcher, allowed_domains, timeout: float, clock):
        super().__init__()
        self.stream = stream
        self.fetcher = fetcher
        #: A callable giving the allowed domains now (a reload may change them).
        self.allowed_domains = allowed_domains
        self.timeout = timeout
        self.clock = clock
        self._cache: dict[str, tuple[float, UploadService | None]] = {}
        self._finding: dict[str, list[defer.Deferred]] = {}

    # -- IQs --------------------------------------------------------------

    def _get(self, to: str, payload: domish.Element) -> defer.Deferred:
        stream = self.stream
        if not stream.connected:
            return defer.fail(ConnectionError("the component stream is down"))
        return stream.request(_Get(to, stream.pinger.probe, payload, self.timeout))

    def _slot(self, service: UploadService, name: str, size: int, content_type: str) -> defer.Deferred:
        request = domish.Element((NS_UPLOAD, "request"))
        request["filename"] = name
        request["size"] = str(size)
        request["content-type"] = content_type

        def parsed(iq):
            slot = next(iq.elements(NS_UPLOAD, "slot"), None)
            put = next(slot.elements(NS_UPLOAD, "put"), None) if slot is not None else None
            get = next(slot.elements(NS_UPLOAD, "get"), None) if slot is not None else None
            if put is None or get is None or not put.getAttribute("url") or not get.getAttribute("url"):
                raise ValueError("the upload service answered without a slot")
            headers = {}
            for h in put.elements(NS_UPLOAD, "header"):
                key = PUT_HEADERS.get((h.getAttribute("name") or "").lower())
                value = str(h).replace("\r", "").replace("\n", "")
                if key and value:
                    headers[key] = value
            get_url = get.getAttribute("url")
            origin = origin_of(get_url)
            if origin is None or origin_of(put.getAttribute("url")) is None:
                raise ValueError("the upload service handed out a URL that is not http or https")
            service.origins.add(origin)
            prefix = file_prefix(get_url)
            if prefix is not None:
                service.prefixes.add(prefix)
            return put.getAttribute("url"), headers, get_url

        return self._get(service.jid, request).addCallback(parsed)

    # -- discovery --------------------------------------------------------

    def _domain_of(self, user: str) -> str | None:
        jid = parse_jid(user)
        if jid is None:
            return None
        domain = jid.host.lower()
        return domain if domain in {d.lower() for d in self.allowed_domains()} else None

    def service(self, domain: str) -> defer.Deferred:
        """The upload service of ``domain`` (cached), or None."""
        cached = self._cache.get(domain)
        if cached is not None and cached[0] > self.clock.seconds():
            return defer.succeed(cached[1])
        d = defer.Deferred()
        waiting = self._finding.get(domain)
        if waiting is not None:
            waiting.append(d)
            return d
        self._finding[domain] = [d]

        def found(result):
            ttl = self.POSITIVE_TTL if result is not None else self.NEGATIVE_TTL
            self._cache[domain] = (self.clock.seconds() + ttl, result)
            return result

        def failed(failure):
            log.info("no upload service found for {domain}: {why}", domain=domain, why=failure.getErrorMessage())
            if failure.check(ConnectionError):
                return None             # the stream was down: ask again once it is back, not in five minutes
            return found(None)

        def fan_out(result):
            for w in self._finding.pop(domain, []):
                w.callback(result)

        self._discover(domain).addCallbacks(found, failed).addCallback(fan_out)
        return d

    @defer.inlineCallbacks
    def _discover(self, domain: str):
        started = time.monotonic()
        if not self.stream.connected:
            raise ConnectionError("the component stream is down")
        candidates = [domain]
        try:
            items = yield self._get(domain, domish.Element((NS_DISCO_ITEMS, "query")))
        except Exception as e:
            log.debug("disco#items of {domain} failed: {e}", domain=domain, e=e)
            items = None
        if items is not None:
            query = next(items.elements(NS_DISCO_ITEMS, "query"), None)
            jids = [i.getAttribute("jid") for i in query.elements(NS_DISCO_ITEMS, "item")] if query else []
            jids = [j for j in dict.fromkeys(jids) if j and parse_jid(j) is not None and j != self.stream.domain]
            jids.sort(key=lambda j: not j.lower().startswith(LIKELY))
            candidates += jids[:MAX_ITEMS]
        for jid in candidates:
            try:
                info = yield self._get(jid, domish.Element((NS_DISCO_INFO, "query")))
            except Exception:
                continue
            query = next(info.elements(NS_DISCO_INFO, "query"), None)
            if query is None:
                continue
            offers, max_size = _has_upload(query)
            if not offers:
                continue
            service = UploadService(jid, max_size)
            try:
                # A slot nobody fills (no PUT: nothing stored): the origin of the service's URLs.
                yield self._slot(service, "probe.txt", 1, "text/plain")
            except Exception as e:
                log.info("the upload service {jid} of {domain} refused a slot ({e}); not used", jid=jid,
                         domain=domain, e=e)
                return None
            log.info("upload service of {domain}: {jid}, files up to {size} bytes, at {origins} "
                     "(found in {t:.2f} s)", domain=domain, jid=jid, size=max_size or "any size",
                     origins=", ".join(sorted(service.origins)), t=time.monotonic() - started)
            return service
        if not self.stream.connected:
            raise ConnectionError("the component stream went down while looking")   # not cached
        return None

    # -- IFileUpload ------------------------------------------------------

    def upload(self, user: str, data: bytes, name: str | None, content_type: str | None) -> defer.Deferred:
        """
        The whole upload (discovery when not cached, slot, PUT) within
        ``timeout``: the caller waits for it before answering its network (an
        SMTP 250). A discovery cut short goes on and is cached for the next file.
        """
        return self._upload(user, data, name, content_type).addTimeout(self.timeout, self.clock)

    @defer.inlineCallbacks
    def _upload(self, user: str, data: bytes, name: str | None, content_type: str | None):
        domain = self._domain_of(user)
        if domain is None:
            return None
        service = yield self.service(domain)
        if service is None:
            return None
        if service.max_size is not None and len(data) > service.max_size:
            log.info("a file of {n} bytes for {user} is larger than {jid} takes ({max}); served from /files/",
                     n=len(data), user=user, jid=service.jid, max=service.max_size)
            return None
        content_type = plain_type(content_type)           # into an XML attribute and an HTTP header
        name = safe_name(name, content_type)
        put_url, headers, get_url = yield self._slot(service, name, len(data), content_type)
        headers["Content-Type"] = content_type
        yield self.fetcher.put(put_url, data, headers, allow_private=True)
        log.info("file {name!r} ({n} bytes) for {user} uploaded to {jid}", name=name, n=len(data), user=user,
                 jid=service.jid)
        return get_url

    def _known(self, user: str) -> defer.Deferred:
        """The service of the user's domain (None: none, or not found within ``timeout``)."""
        domain = self._domain_of(user)
        if domain is None:
            return defer.succeed(None)
        d = self.service(domain).addTimeout(self.timeout, self.clock)
        return d.addErrback(lambda f: None)

    def available(self, user: str) -> defer.Deferred:
        return self._known(user).addCallback(lambda service: service is not None)

    def is_upload_url(self, user: str, url: str) -> defer.Deferred:
        origin = origin_of(url)
        if origin is None or file_prefix(url) is None:
            return defer.succeed(False)
        at = origin + urllib.parse.urlsplit(url).path
        return self._known(user).addCallback(
            lambda service: service is not None and any(at == p or (p.endswith("/") and at.startswith(p))
                                                        for p in service.prefixes))


__all__ = ["UploadHandler", "UploadService", "NS_UPLOAD", "origin_of"]
