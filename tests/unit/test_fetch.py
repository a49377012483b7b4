"""
gateway/web/fetch.py against a real twisted.web server on loopback: which
addresses are refused (every resolved one checked), that the connection goes
to the address that was checked, and the size and time caps.
"""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.web import resource, server

from gateway.web.fetch import FetchFailed, Fetcher, FetchRefused, FileTooLarge, is_public

BLOB = bytes(range(256)) * 40          # 10240 bytes


class Files(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.hosts: list[bytes] = []
        self.waiting: list = []

    def render_GET(self, request):
        self.hosts.append(request.getHeader(b"host"))
        path = request.path
        if path == b"/ok.bin":
            request.setHeader(b"content-type", b"application/x-test; charset=x")
            return BLOB
        if path == b"/chunked":
            # No Content-Length: the cap must cut the body off while it arrives.
            for _ in range(50):
                request.write(BLOB)
            request.finish()
            return server.NOT_DONE_YET
        if path == b"/again":
            request.redirect(b"/ok.bin")
            return b""
        if path == b"/slow":
            self.waiting.append(request)
            return server.NOT_DONE_YET
        request.setResponseCode(404)
        return b"no"


@pytest.fixture
def site():
    files = Files()
    port = reactor.listenTCP(0, server.Site(files), interface="127.0.0.1")
    files.port = port.getHost().port
    yield files
    for r in files.waiting:
        if not r.finished:
            r.finish()
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


def resolver(table):
    def resolve(host, port):
        return defer.succeed(table[host])
    return resolve


def test_public_addresses():
    for private in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.0.1", "169.254.1.1", "0.0.0.0", "::1",
                    "::ffff:127.0.0.1", "fc00::1", "fe80::1", "224.0.0.1", "100.64.0.1", "::"):
        assert not is_public(private), private
    for public in ("93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34"):
        assert is_public(public), public


@pytest_twisted.inlineCallbacks
def test_loopback_refused_unless_allowed(site):
    url = f"http://127.0.0.1:{site.port}/ok.bin"
    with pytest.raises(FetchRefused) as refused:
        yield Fetcher(reactor, 100_000, 10, allow_private=False).fetch(url)
    assert "127.0.0.1" in refused.value.text and refused.value.condition == "not-allowed"
    assert site.hosts == []
    got = yield Fetcher(reactor, 100_000, 10, allow_private=True).fetch(url)
    assert got.data == BLOB and got.content_type == "application/x-test" and got.name == "ok.bin"


@pytest_twisted.inlineCallbacks
def test_every_resolved_address_is_checked():
    """One private address among public ones is enough to refuse: the connect could pick either."""
    fetcher = Fetcher(reactor, 100_000, 10, allow_private=False,
                      resolve=resolver({"mixed.test": ["93.184.216.34", "10.0.0.5"]}))
    with pytest.raises(FetchRefused) as refused:
        yield fetcher.fetch("http://mixed.test/x.png")
    assert "10.0.0.5" in refused.value.text


@pytest_twisted.inlineCallbacks
def test_connects_to_the_checked_address_with_the_names_host_header(site):
    """No second lookup between check and connect: the resolver's answer is where the request goes."""
    fetcher = Fetcher(reactor, 100_000, 10, allow_private=True, resolve=resolver({"files.test": ["127.0.0.1"]}))
    got = yield fetcher.fetch(f"http://files.test:{site.port}/ok.bin")
    assert got.data == BLOB
    assert site.hosts == [f"files.test:{site.port}".encode()]


@pytest_twisted.inlineCallbacks
def test_schemes_and_credentials_refused():
    fetcher = Fetcher(reactor, 100_000, 10, allow_private=True)
    for url in ("file:///etc/passwd", "gopher://127.0.0.1/", "ftp://example.org/x", "http://user:pw@127.0.0.1/",
                "not a url"):
        with pytest.raises(FetchRefused):
            yield fetcher.fetch(url)


@pytest_twisted.inlineCallbacks
def test_size_caps(site):
    fetcher = Fetcher(reactor, len(BLOB) - 1, 10, allow_private=True)
    with pytest.raises(FileTooLarge) as declared:
        yield fetcher.fetch(f"http://127.0.0.1:{site.port}/ok.bin")          # Content-Length says so
    assert str(len(BLOB) - 1) in declared.value.text
    with pytest.raises(FileTooLarge):
        yield Fetcher(reactor, 100_000, 10, allow_private=True).fetch(f"http://127.0.0.1:{site.port}/chunked")
    got = yield Fetcher(reactor, 50 * len(BLOB), 10, allow_private=True).fetch(
        f"http://127.0.0.1:{site.port}/chunked")
    assert got.data == BLOB * 50


@pytest_twisted.inlineCallbacks
def test_redirects_followed_and_errors_named(site):
    fetcher = Fetcher(reactor, 100_000, 10, allow_private=True)
    got = yield fetcher.fetch(f"http://127.0.0.1:{site.port}/again")
    assert got.data == BLOB and got.url.endswith("/ok.bin")
    with pytest.raises(FetchFailed) as missing:
        yield fetcher.fetch(f"http://127.0.0.1:{site.port}/nothing")
    assert "404" in missing.value.text and missing.value.condition == "item-not-found"


@pytest_twisted.inlineCallbacks
def test_time_cap(site):
    fetcher = Fetcher(reactor, 100_000, 0.5, allow_private=True)
    with pytest.raises(FetchFailed) as slow:
        yield fetcher.fetch(f"http://127.0.0.1:{site.port}/slow")
    assert slow.value.condition == "remote-server-timeout"


@pytest_twisted.inlineCallbacks
def test_https_checks_the_urls_name_on_the_pinned_connection(tmp_path):
    """Connecting to the checked address must not weaken TLS: the certificate still has to name the URL's host."""
    from twisted.internet import ssl

    from gateway.testing.certs import self_signed

    cert_path, key_path = self_signed(str(tmp_path), ("files.test",))
    with open(cert_path) as f:
        cert_pem = f.read()
    with open(key_path) as f:
        key_pem = f.read()
    server_cert = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem)
    port = reactor.listenSSL(0, server.Site(Files()), server_cert.options(), interface="127.0.0.1")
    number = port.getHost().port
    try:
        table = resolver({"files.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
        trusted = Fetcher(reactor, 100_000, 10, allow_private=True, resolve=table,
                          trust_root=ssl.Certificate.loadPEM(cert_pem))
        got = yield trusted.fetch(f"https://files.test:{number}/ok.bin")
        assert got.data == BLOB
        with pytest.raises(FetchFailed):
            yield trusted.fetch(f"https://other.test:{number}/ok.bin")        # not the certificate's name
        with pytest.raises(FetchFailed):
            yield Fetcher(reactor, 100_000, 10, allow_private=True, resolve=table).fetch(
                f"https://files.test:{number}/ok.bin")                       # not a CA the system trusts
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_private_allowance_for_one_url_is_not_one_for_its_redirects(site):
    """
    The upload service's own URL may be on a private address (fetch(allow_private=True));
    where it redirects is checked like any URL, or a redirect there (or on the same web
    server) would reach any private address. (Found by the adversary review.)
    """
    fetcher = Fetcher(reactor, 100_000, 10, allow_private=False)
    got = yield fetcher.fetch(f"http://127.0.0.1:{site.port}/ok.bin", allow_private=True)
    assert got.data == BLOB
    with pytest.raises(FetchRefused):
        yield fetcher.fetch(f"http://127.0.0.1:{site.port}/again", allow_private=True)


@pytest_twisted.inlineCallbacks
def test_transfers_at_once_are_bounded(site):
    """Many users' files at once: at most MAX_FETCHES bodies are being read (each up to max_size
    bytes in memory); the others wait their turn within their own time cap."""
    from gateway.web import fetch as fetch_module
    fetcher = Fetcher(reactor, 100_000, 20.0, allow_private=True)
    pending = [fetcher.fetch(f"http://127.0.0.1:{site.port}/slow") for _ in range(fetch_module.MAX_FETCHES + 3)]
    for _ in range(100):
        if len(site.waiting) >= fetch_module.MAX_FETCHES:
            break
        yield deferLater(0.05)
    yield deferLater(0.3)                      # time for any transfer past the bound to arrive
    assert len(site.waiting) == fetch_module.MAX_FETCHES
    for r in list(site.waiting):               # the first ones end: the waiting ones go
        r.write(BLOB)
        r.finish()
    for _ in range(100):
        if len(site.waiting) >= fetch_module.MAX_FETCHES + 3:
            break
        yield deferLater(0.05)
    assert len(site.waiting) == fetch_module.MAX_FETCHES + 3
    for r in site.waiting:
        if not r.finished:
            r.write(BLOB)
            r.finish()
    results = yield defer.gatherResults(pending)
    assert all(r.data == BLOB for r in results)


def deferLater(seconds: float):
    from twisted.internet import task
    return task.deferLater(reactor, seconds, lambda: None)
