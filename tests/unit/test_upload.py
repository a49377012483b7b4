"""
The XEP-0363 client (gateway/xmpp/upload.py) on the in-memory wire, the test
playing the user's server: discovery and its cache, the size limit from the
service's form, and hostile slots (headers with CR/LF or not allowed by
XEP-0363, URLs that are not http) — the real end to end is
tests/integration/test_attachments.py.
"""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from gateway.xmpp.upload import NS_UPLOAD, UploadHandler
from gateway.adapters.echo import EchoAdapter
from tests.unit.wire import DOMAIN, Wire

USER = "alice@example.org/phone"
FORM = ("<x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'><value>" + NS_UPLOAD +
        "</value></field><field var='max-file-size'><value>{size}</value></field></x>")


class Puts:
    def __init__(self):
        self.calls = []

    def put(self, url, data, headers, allow_private=False):
        self.calls.append((url, data, dict(headers), allow_private))
        return defer.succeed(None)


@pytest.fixture
def wire(tmp_path):
    w = pytest_twisted.blockon(Wire(str(tmp_path / "reg.sqlite")).start())
    puts = Puts()
    handler = UploadHandler(w.stream, puts, lambda: {"example.org"}, 5.0, reactor)
    handler.setHandlerParent(w.stream)
    w.handler, w.puts = handler, puts
    yield w
    w.stop()


@defer.inlineCallbacks
def answer(wire, name, payload, to_ns=None):
    """Wait for the gateway's IQ whose child is ``name`` and answer it with ``payload``."""
    iq = yield wire.wait(lambda el: el.name == "iq" and any(c.name == name for c in el.elements()))
    wire.feed(f"<iq type='result' id='{iq['id']}' from='{iq['to']}' to='{iq['from']}'>{payload}</iq>")
    return iq


@defer.inlineCallbacks
def discover(wire, size=1000):
    yield answer(wire, "query", "<query xmlns='http://jabber.org/protocol/disco#items'>"
                                "<item jid='conference.example.org'/><item jid='upload.example.org'/></query>")
    first = yield answer(wire, "query", "<query xmlns='http://jabber.org/protocol/disco#info'/>")
    assert first["to"] == "example.org"
    second = yield answer(wire, "query", "<query xmlns='http://jabber.org/protocol/disco#info'>"
                          f"<feature var='{NS_UPLOAD}'/>{FORM.format(size=size)}</query>")
    assert second["to"] == "upload.example.org"       # the likelier name is asked first
    yield answer(wire, "request", slot("https://up.example.org/put/0/probe", "https://up.example.org/get/0/probe"))


def slot(put, get, headers=""):
    return f"<slot xmlns='{NS_UPLOAD}'><put url='{put}'>{headers}</put><get url='{get}'/></slot>"


@pytest_twisted.inlineCallbacks
def test_discovery_cache_and_hostile_headers(wire):
    d = wire.handler.upload(USER, b"hello", "a b.txt", "text/plain")
    yield discover(wire)
    request = yield answer(wire, "request", slot(
        "https://up.example.org/put/1", "https://up.example.org/get/1/a%20b.txt",
        "<header name='Authorization'>Bearer x&#13;&#10;X-Injected: 1</header><header name='X-Evil'>1</header>"
        "<header name='Host'>internal</header>"))
    req = next(request.elements(NS_UPLOAD, "request"))
    assert (req["filename"], req["size"], req["content-type"]) == ("a b.txt", "5", "text/plain")
    assert request["from"] == wire.stream.pinger.probe           # one of the component's own JIDs
    url = yield d
    assert url == "https://up.example.org/get/1/a%20b.txt"
    put_url, data, headers, allow_private = wire.puts.calls[0]
    assert put_url == "https://up.example.org/put/1" and data == b"hello" and allow_private
    assert headers == {"Authorization": "Bearer xX-Injected: 1", "Content-Type": "text/plain"}

    # Cached: the next file asks for its slot only.
    d = wire.handler.upload(USER, b"again", "b.txt", "text/plain")
    yield answer(wire, "request", slot("https://up.example.org/put/2", "https://up.example.org/get/2/b.txt"))
    assert (yield d) == "https://up.example.org/get/2/b.txt"
    assert (yield wire.handler.is_upload_url(USER, "https://up.example.org/get/9/x.png"))
    assert not (yield wire.handler.is_upload_url(USER, "https://elsewhere.example/get/9/x.png"))


@pytest_twisted.inlineCallbacks
def test_size_limit_from_the_form_and_bad_urls(wire):
    d = wire.handler.upload(USER, b"x" * 2000, "big.bin", None)
    yield discover(wire, size=1000)
    assert (yield d) is None                  # larger than the service takes: no slot asked for
    assert [el for el in wire.sent() if el.name == "iq"] == []

    d = wire.handler.upload(USER, b"small", "s.bin", None)
    yield answer(wire, "request", slot("https://up.example.org/p", "file:///etc/passwd"))
    with pytest.raises(ValueError):
        yield d
    assert wire.puts.calls == []


@pytest_twisted.inlineCallbacks
def test_only_users_of_allowed_domains(wire):
    assert (yield wire.handler.upload("mallory@elsewhere.example/x", b"x", "x", None)) is None
    assert not (yield wire.handler.available("mallory@elsewhere.example"))
    assert [el for el in wire.sent() if el.name == "iq"] == []


class NoFiles(EchoAdapter):
    """A network that carries no files (IRC): what it is given to send is kept."""

    features = frozenset({"receipts"})
    given: list = []

    def send(self, message, registration):
        NoFiles.given.append(message)
        return super().send(message, registration)


@pytest_twisted.inlineCallbacks
def test_a_network_without_files_gets_the_url_as_text(tmp_path):
    """The body that repeats an XEP-0066 URL is dropped only where the network carries the file instead;
    elsewhere (IRC) the URL is the text, or added to it."""
    w = yield Wire(str(tmp_path / "reg.sqlite"), adapter=NoFiles).start()
    try:
        yield w.register()
        url = "https://up.example.org/get/1/a.png"
        w.feed(f"<message from='{USER}' to='bob@{DOMAIN}' id='f1' type='chat'><body>{url}</body>"
               f"<x xmlns='jabber:x:oob'><url>{url}</url></x></message>")
        yield w.wait(lambda el: el.name == "message" and el.getAttribute("type") == "chat")
        assert NoFiles.given[-1].body == url
        # A file without a body: the URL is the text.
        w.feed(f"<message from='{USER}' to='bob@{DOMAIN}' id='f2' type='chat'>"
               f"<x xmlns='jabber:x:oob'><url>{url}</url></x></message>")
        yield w.wait(lambda el: el.name == "message" and el.getAttribute("type") == "chat")
        assert NoFiles.given[-1].body == url and NoFiles.given[-1].attachments == []
        w.feed(f"<message from='{USER}' to='bob@{DOMAIN}' id='f3' type='chat'><body>look</body>"
               f"<x xmlns='jabber:x:oob'><url>{url}</url></x></message>")
        yield w.wait(lambda el: el.name == "message" and el.getAttribute("type") == "chat")
        assert NoFiles.given[-1].body == f"look\n{url}"
    finally:
        w.stop()


def test_the_bridge_and_the_upload_handler_implement_their_interfaces():
    from zope.interface.verify import verifyClass

    from gateway.bridge import Bridge
    from gateway.interfaces import IAdapterContext, IFileUpload

    assert verifyClass(IFileUpload, UploadHandler)
    assert verifyClass(IAdapterContext, Bridge)


@pytest_twisted.inlineCallbacks
def test_a_server_that_never_answers_costs_one_timeout(tmp_path):
    """Discovery IQs nobody answers: the upload fails within upload_timeout (the caller serves the file
    from /files/), and a second user's check waits no longer."""
    import time

    w = yield Wire(str(tmp_path / "reg.sqlite")).start()
    handler = UploadHandler(w.stream, Puts(), lambda: {"example.org"}, 0.3, reactor)
    handler.setHandlerParent(w.stream)
    try:
        started = time.monotonic()
        with pytest.raises(defer.TimeoutError):
            yield handler.upload(USER, b"x", "x.txt", None)
        assert time.monotonic() - started < 2
        started = time.monotonic()
        assert not (yield handler.available("bob@example.org"))
        assert time.monotonic() - started < 2
    finally:
        w.stop()


@pytest_twisted.inlineCallbacks
def test_the_bridge_serves_a_file_itself_when_the_upload_fails(wire):
    class Store:
        def __init__(self):
            self.put_calls = []

        def put(self, data, name, content_type):
            self.put_calls.append((data, name, content_type))
            return defer.succeed("https://gw.example.org/files/t/a.txt")

    class Broken:
        timeout = 1.0

        def upload(self, user, data, name, content_type):
            return defer.fail(RuntimeError("PUT answered 500"))

        def available(self, user):
            return defer.succeed(True)

        def is_upload_url(self, user, url):
            return defer.succeed(False)

    store = Store()
    wire.bridge.files = store
    wire.bridge.attach_uploads(Broken())
    url = yield wire.bridge.offer_file("alice@example.org", b"abc", "a.txt", "text/plain")
    assert url == "https://gw.example.org/files/t/a.txt" and store.put_calls == [(b"abc", "a.txt", "text/plain")]
    # MMS media that cannot be moved keep the network's URL.
    assert (yield wire.bridge.rehost("alice@example.org", "ftp://provider.example/m.jpg")) == \
        "ftp://provider.example/m.jpg"


@pytest_twisted.inlineCallbacks
def test_messages_keep_their_order_while_the_upload_service_is_found(wire):
    """The first body-only URL waits for discovery; the user's next messages wait behind it, in order."""
    wire.bridge.attach_uploads(wire.handler)
    yield wire.register()
    wire.sent()
    url = "https://up.example.org/get/7/cat.png"
    wire.feed(f"<message from='{USER}' to='bob@{DOMAIN}' id='o1' type='chat'><body>{url}</body></message>")
    wire.feed(f"<message from='{USER}' to='bob@{DOMAIN}' id='o2' type='chat'><body>second</body></message>")
    wire.feed(f"<message from='{USER}' to='bob@{DOMAIN}' id='o3' type='chat'><body>third</body></message>")
    yield discover(wire)
    echoes = []
    for _ in range(3):
        echo = yield wire.wait(lambda el: el.name == "message" and el.getAttribute("type") == "chat" and
                               any(c.name == "body" for c in el.elements()))
        echoes.append(echo)
    bodies = [str(next(c for c in e.elements() if c.name == "body")) for e in echoes]
    assert bodies == [url, "second", "third"]
    # The first became a file: the echo carries it as XEP-0066.
    assert any(c.name == "x" for c in echoes[0].elements())
    from gateway.xmpp.messages import MessageHandler

    assert next(h for h in wire.stream.handlers if isinstance(h, MessageHandler))._waiting == {}


@pytest_twisted.inlineCallbacks
def test_a_stream_that_was_down_is_not_remembered_as_no_service(wire):
    wire.stream.slotted = False                     # the stream is down
    assert not (yield wire.handler.available(USER))
    wire.stream.slotted = True
    d = wire.handler.upload(USER, b"hello", "a.txt", "text/plain")
    yield discover(wire)                            # asked again at once, not after NEGATIVE_TTL
    yield answer(wire, "request", slot("https://up.example.org/put/3", "https://up.example.org/get/3/a.txt"))
    assert (yield d) == "https://up.example.org/get/3/a.txt"


@pytest_twisted.inlineCallbacks
def test_only_the_services_file_urls_count_as_its_own(wire):
    """
    A URL counts as the upload service's (and may then be on a private address)
    only under the path its slots hand out: the same origin held every other
    page of that web server too (Prosody's port 5280 serves /metrics, admin
    and BOSH pages meant for local addresses), for the gateway to fetch and mail
    to whoever the user writes to. (Found by the adversary review.)
    """
    d = wire.handler.upload(USER, b"hello", "a.txt", "text/plain")
    yield discover(wire)
    yield answer(wire, "request", slot("https://up.example.org/put/1", "https://up.example.org/get/1/a.txt"))
    yield d
    assert (yield wire.handler.is_upload_url(USER, "https://up.example.org/get/9/x.png"))
    for url in ("https://up.example.org/metrics", "https://up.example.org/admin/get/1",
                "https://up.example.org/get/../metrics", "https://up.example.org/get/%2e%2e/metrics",
                "https://up.example.org/get/9/%2E%2e/../../metrics", "https://up.example.org/getx/1"):
        assert not (yield wire.handler.is_upload_url(USER, url)), url


@pytest_twisted.inlineCallbacks
def test_a_hostile_content_type_does_not_reach_the_slot_request(wire):
    """
    A mail part typed ``image/p\\x01ng`` (Python's email parser keeps control
    characters): the type went into the slot request's content-type attribute
    as it was, and a character XML forbids makes the server close the component
    stream for every user. Anything not a plain type/subtype is sent as
    application/octet-stream. (Found by the adversary review.)
    """
    d = wire.handler.upload(USER, b"hello", "a.png", "image/p\x01n\x0bg")
    yield discover(wire)
    request = yield answer(wire, "request", slot("https://up.example.org/put/1", "https://up.example.org/get/1/a.png"))
    req = next(request.elements(NS_UPLOAD, "request"))
    assert req["content-type"] == "application/octet-stream"
    yield d
    assert wire.puts.calls[-1][2]["Content-Type"] == "application/octet-stream"
