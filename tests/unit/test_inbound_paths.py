"""
The inbound hot paths made cheaper for issue 11 keep their behaviour: the web
site's own form parsing gives ``request.args`` as Twisted's did, and the
bridge's cache of registrations by foreign id never answers with a
registration that changed in this process.
"""

from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.web import resource

from gateway.bridge.bridge import Bridge
from gateway.model import Registration
from gateway.web.limits import LimitedSite


class _Record(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen = []

    def render_POST(self, request):
        self.seen.append((dict(request.args), request.content.read()))
        return b"ok"


def _post(content_type: bytes, body: bytes, path: bytes = b"/hook?q=3"):
    record = _Record()
    site = LimitedSite(record)
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type
                         + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert record.seen, channel.transport.value()
    return record.seen[0]


def test_urlencoded_forms_are_parsed_into_args_whatever_the_case_and_parameters():
    args, content = _post(b"Application/X-WWW-Form-Urlencoded ; charset=utf-8", b"a=1&b=2&a=%20x")
    assert args == {b"q": [b"3"], b"a": [b"1", b" x"], b"b": [b"2"]}
    assert content == b"a=1&b=2&a=%20x"          # the body is still there for resources that read it


def test_other_bodies_are_not_taken_as_forms():
    args, content = _post(b"text/plain", b"a=1")
    assert args == {b"q": [b"3"]}
    assert content == b"a=1"


def test_multipart_forms_still_go_through_twisted():
    body = (b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--B--\r\n")
    args, _ = _post(b"multipart/form-data; boundary=B", body)
    assert args[b"a"] == [b"1"]


class _Registry:
    shared = False

    def __init__(self):
        self.regs = {"+15551230000": Registration("sms.example", "u@example.org", foreign_id="+15551230000")}
        self.queries = 0

    def registration_by_foreign_id(self, component, foreign_id):
        self.queries += 1
        return defer.succeed(self.regs.get(foreign_id))

    def get_registration(self, component, jid):
        return defer.succeed(next((r for r in self.regs.values() if r.jid == jid), None))

    def delete_registration(self, component, jid):
        self.regs = {k: r for k, r in self.regs.items() if r.jid != jid}
        return defer.succeed(True)


class _Adapter:
    def user_unregistered(self, reg):
        return None


def _bridge():
    bridge = Bridge.__new__(Bridge)
    bridge.component, bridge.registry, bridge.adapter = "sms.example", _Registry(), _Adapter()
    bridge._cache, bridge._by_foreign = {}, {}
    return bridge


def _result(d):
    out = []
    d.addBoth(out.append)
    return out[0]


def test_found_registrations_are_cached_unknown_addresses_asked_again():
    bridge = _bridge()
    assert _result(bridge.registration_by_foreign_id("+15551230000")).jid == "u@example.org"
    assert _result(bridge.registration_by_foreign_id("+15551230000")).jid == "u@example.org"
    assert bridge.registry.queries == 1
    assert _result(bridge.registration_by_foreign_id("+15559999999")) is None
    assert _result(bridge.registration_by_foreign_id("+15559999999")) is None
    assert bridge.registry.queries == 3


def test_an_unregistered_user_is_not_found_by_foreign_id_any_more():
    bridge = _bridge()
    assert _result(bridge.registration_by_foreign_id("+15551230000")) is not None
    _result(bridge.unregister("u@example.org"))
    assert _result(bridge.registration_by_foreign_id("+15551230000")) is None


def test_entries_expire(monkeypatch):
    import gateway.bridge.bridge as module
    bridge = _bridge()
    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    _result(bridge.registration_by_foreign_id("+15551230000"))
    now[0] += Bridge.CACHE_TTL + 1
    _result(bridge.registration_by_foreign_id("+15551230000"))
    assert bridge.registry.queries == 2
