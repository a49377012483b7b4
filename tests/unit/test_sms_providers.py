"""
SMS providers: webhook signatures (checked against the official twilio package, a
peer implementation), and each provider's HTTP requests and answers over real HTTP
to a local capturing server.
"""

import base64
import hashlib
import hmac
import json
import time
from urllib.parse import parse_qs

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twilio.request_validator import RequestValidator
from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from twisted.web import resource, server

from gateway.adapters.sms.providers import (GenericJSONProvider, OutboundSMS, SendUnconfirmed, TelnyxProvider,
                                            TwilioProvider, WebhookRejected, WebhookRequest)
from gateway.adapters.sms.providers.twilio import signature
from gateway.model import PermanentFailure, TemporaryFailure
from gateway.testing.twilio_simulator import twilio_signature

TOKEN = "12345678901234567890123456789012"
URL = "https://gw.example.org/hooks/sms.example.org/twilio/inbound"
PARAMS = {"From": ["+12025550143"], "To": ["+14155550100"], "Body": ["héllo & bye"], "NumMedia": ["1"],
          "MediaUrl0": ["https://api.twilio.com/media/ME1"], "MessageSid": ["SM1"]}


def form_body(params):
    from urllib.parse import urlencode
    return urlencode([(k, v) for k, vs in params.items() for v in vs]).encode()


# -- Twilio signatures ------------------------------------------------------------

def test_our_twilio_signature_matches_the_official_validator():
    validator = RequestValidator(TOKEN)
    flat = {k: v[0] for k, v in PARAMS.items()}
    assert signature(TOKEN, URL, PARAMS) == validator.compute_signature(URL, flat)
    assert validator.validate(URL, flat, signature(TOKEN, URL, PARAMS))
    sim = twilio_signature(TOKEN, URL, [(k, v[0]) for k, v in PARAMS.items()])
    assert validator.validate(URL, flat, sim)


def twilio(options=None):
    opts = {"account_sid": "AC1", "auth_token": TOKEN, "api_url": "http://127.0.0.1:1", "http_timeout": 5.0}
    return TwilioProvider({**opts, **(options or {})}, None, reactor)


def test_twilio_webhook_verification():
    provider = twilio()
    body = form_body(PARAMS)
    good = WebhookRequest(URL, {"x-twilio-signature": signature(TOKEN, URL, PARAMS)}, body)
    sms = provider.parse_inbound(good, {}.get)
    assert (sms.sender, sms.recipient, sms.body, sms.media) == (
        "+12025550143", "+14155550100", "héllo & bye", [("https://api.twilio.com/media/ME1", "")])
    with pytest.raises(WebhookRejected):
        provider.parse_inbound(WebhookRequest(URL, {}, body), {}.get)
    forged = signature("another-token-entirely-000000000", URL, PARAMS)
    with pytest.raises(WebhookRejected):
        provider.parse_inbound(WebhookRequest(URL, {"x-twilio-signature": forged}, body), {}.get)
    tampered = form_body({**PARAMS, "Body": ["give me money"]})
    with pytest.raises(WebhookRejected):
        provider.parse_inbound(WebhookRequest(URL, good.headers, tampered), {}.get)
    # a per-user token verifies that user's webhooks
    user_sig = signature("users-own-token-0000000000000000", URL, PARAMS)
    assert provider.parse_inbound(WebhookRequest(URL, {"x-twilio-signature": user_sig}, body),
                                  {"+14155550100": "users-own-token-0000000000000000"}.get).id == "SM1"


def test_twilio_status_parsing():
    provider = twilio()
    params = {"MessageSid": ["SM9"], "MessageStatus": ["undelivered"], "ErrorCode": ["30003"],
              "To": ["+12025550143"], "From": ["+14155550100"]}
    req = WebhookRequest(URL, {"x-twilio-signature": signature(TOKEN, URL, params)}, form_body(params))
    report = provider.parse_status(req, {}.get)
    assert (report.id, report.delivered) == ("SM9", False)
    assert "unreachable" in report.reason and "30003" in report.reason


# -- Telnyx Ed25519 -----------------------------------------------------------------

def telnyx_keys():
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    return key, public


def telnyx(public, api_url="http://127.0.0.1:1"):
    return TelnyxProvider({"telnyx_api_key": "KEY", "telnyx_public_key": public, "api_url": api_url,
                           "telnyx_tolerance": 300.0, "http_timeout": 5.0, "telnyx_messaging_profile_id": ""},
                          None, reactor)


def signed(key, body: bytes, stamp: int | None = None):
    stamp = str(stamp or int(time.time()))
    sig = base64.b64encode(key.sign(stamp.encode() + b"|" + body)).decode()
    return {"telnyx-signature-ed25519": sig, "telnyx-timestamp": stamp}


def test_telnyx_webhook_verification():
    key, public = telnyx_keys()
    provider = telnyx(public)
    event = json.dumps({"data": {"event_type": "message.received", "payload": {
        "id": "m1", "from": {"phone_number": "+12025550143"}, "to": [{"phone_number": "+14155550100"}],
        "text": "hi", "media": [{"url": "https://m.example/1.jpg", "content_type": "image/jpeg"}]}}}).encode()
    sms = provider.parse_inbound(WebhookRequest(URL, signed(key, event), event), {}.get)
    assert (sms.sender, sms.recipient, sms.body, sms.media[0][0]) == ("+12025550143", "+14155550100", "hi",
                                                                     "https://m.example/1.jpg")
    other, _ = telnyx_keys()
    for headers in (signed(other, event), {}, signed(key, event, stamp=int(time.time()) - 3600),
                    signed(key, event + b" ")):
        with pytest.raises(WebhookRejected):
            provider.parse_inbound(WebhookRequest(URL, headers, event), {}.get)
    status = json.dumps({"data": {"event_type": "message.finalized", "payload": {
        "id": "m2", "to": [{"phone_number": "+12025550143", "status": "delivery_failed"}],
        "errors": [{"code": "40002", "detail": "Blocked as spam"}]}}}).encode()
    report = provider.parse_status(WebhookRequest(URL, signed(key, status), status), {}.get)
    assert (report.id, report.delivered, report.reason) == ("m2", False, "Blocked as spam")


# -- requests on the wire ---------------------------------------------------------

class Capture(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []
        self.answers = []

    def render_POST(self, request):
        self.requests.append({"path": request.path.decode(), "headers": dict(
            (k.decode().lower(), v[0].decode()) for k, v in request.requestHeaders.getAllRawHeaders()),
            "body": request.content.read()})
        code, payload = self.answers.pop(0) if self.answers else (200, {})
        if code == "drop":                      # took the request, then the connection broke
            request.transport.abortConnection()
            return server.NOT_DONE_YET
        if code == "late":                      # took the request, answers after ``payload`` seconds
            def answer():
                if not request._disconnected:
                    request.write(b"{}")
                    request.finish()
            reactor.callLater(payload, answer)
            return server.NOT_DONE_YET
        request.setResponseCode(code)
        return json.dumps(payload).encode()


@pytest.fixture
def http():
    capture = Capture()
    port = reactor.listenTCP(0, server.Site(capture), interface="127.0.0.1")
    pool = ThreadPool(0, 2, name="test-http")
    pool.start()
    yield capture, f"http://127.0.0.1:{port.getHost().port}", pool
    pool.stop()
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.inlineCallbacks
def test_twilio_send_request_and_errors(http):
    capture, base, pool = http
    provider = TwilioProvider({"account_sid": "AC1", "auth_token": TOKEN, "api_url": base, "http_timeout": 5.0},
                              pool, reactor)
    capture.answers = [(201, {"sid": "SM5", "num_segments": "2", "status": "queued"}),
                       (400, {"code": 21211, "message": "The 'To' number is not valid"}),
                       (503, {"code": 20503, "message": "Service unavailable"}),
                       (401, {"code": 20003, "message": "Authenticate"})]
    sms = OutboundSMS("+14155550100", ["+12025550143"], "hello", ["https://f.example/a.png"], URL)
    result = yield provider.send(sms)
    assert (result.id, result.segments) == ("SM5", 2)
    req = capture.requests[0]
    assert req["path"] == "/2010-04-01/Accounts/AC1/Messages.json"
    assert req["headers"]["authorization"] == "Basic " + base64.b64encode(f"AC1:{TOKEN}".encode()).decode()
    assert parse_qs(req["body"].decode()) == {"To": ["+12025550143"], "From": ["+14155550100"], "Body": ["hello"],
                                              "MediaUrl": ["https://f.example/a.png"], "StatusCallback": [URL]}
    with pytest.raises(PermanentFailure) as refused:
        yield provider.send(sms)
    assert refused.value.condition == "not-acceptable" and "21211" in refused.value.text
    with pytest.raises(TemporaryFailure):
        yield provider.send(sms)
    with pytest.raises(PermanentFailure) as auth:
        yield provider.send(sms)
    assert auth.value.condition == "service-unavailable"
    down = TwilioProvider({"account_sid": "AC1", "auth_token": TOKEN, "api_url": "http://127.0.0.1:9",
                           "http_timeout": 2.0}, pool, reactor)
    with pytest.raises(TemporaryFailure) as unreachable:
        yield down.send(sms)
    assert "cannot reach twilio" in unreachable.value.text


@pytest_twisted.inlineCallbacks
def test_an_answer_lost_after_sending_is_unconfirmed_not_temporary(http):
    """Retrying is safe only when the request cannot have reached the provider."""
    capture, base, pool = http
    provider = TwilioProvider({"account_sid": "AC1", "auth_token": TOKEN, "api_url": base, "http_timeout": 0.5},
                              pool, reactor)
    sms = OutboundSMS("+14155550100", ["+12025550143"], "hello", [], URL)
    capture.answers = [("late", 2.0), ("drop", None), (503, {"code": 20503, "message": "Service unavailable"}),
                       (429, {"code": 20429, "message": "Too Many Requests"})]
    for _ in ("late", "drop"):
        with pytest.raises(SendUnconfirmed):
            yield provider.send(sms)
    for _ in (503, 429):                       # the provider answered: it did not take the message
        with pytest.raises(TemporaryFailure):
            yield provider.send(sms)
    assert len(capture.requests) == 4
    for api_url in ("http://127.0.0.1:9", "http://unresolvable.invalid"):   # refused, no such host
        down = TwilioProvider({"account_sid": "AC1", "auth_token": TOKEN, "api_url": api_url, "http_timeout": 2.0},
                              pool, reactor)
        with pytest.raises(TemporaryFailure) as unreachable:
            yield down.send(sms)
        assert not isinstance(unreachable.value, SendUnconfirmed)


def test_which_network_errors_prove_the_request_never_left():
    import requests
    from urllib3.exceptions import MaxRetryError, NameResolutionError, NewConnectionError, ProtocolError

    from gateway.adapters.sms.providers.base import never_sent

    refused = requests.ConnectionError(MaxRetryError(None, "/", NewConnectionError(None, "refused")))
    no_host = requests.ConnectionError(MaxRetryError(None, "/", NameResolutionError("h", None, OSError())))
    reset = requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError()))
    for error in (refused, no_host, requests.ConnectTimeout(), requests.exceptions.SSLError(),
                  requests.exceptions.InvalidURL()):
        assert never_sent(error), error
    for error in (reset, requests.ReadTimeout(), requests.exceptions.ChunkedEncodingError(),
                  requests.RequestException()):
        assert not never_sent(error), error


def test_inbound_webhooks_name_the_providers_own_message_id():
    """The id a provider keeps when it sends the same webhook again: what repeats are recognised by."""
    body = form_body(PARAMS)
    sms = twilio().parse_inbound(WebhookRequest(URL, {"x-twilio-signature": signature(TOKEN, URL, PARAMS)}, body),
                                 {}.get)
    assert sms.dedupe_id == "SM1"
    old = {k: v for k, v in PARAMS.items() if k != "MessageSid"} | {"SmsSid": ["SM2"]}
    sms = twilio().parse_inbound(WebhookRequest(URL, {"x-twilio-signature": signature(TOKEN, URL, old)},
                                                form_body(old)), {}.get)
    assert sms.dedupe_id == "SM2"

    key, public = telnyx_keys()
    event = json.dumps({"data": {"id": "ev1", "event_type": "message.received", "payload": {
        "id": "m1", "from": {"phone_number": "+12025550143"}, "to": [{"phone_number": "+14155550100"}],
        "text": "hi"}}}).encode()
    assert telnyx(public).parse_inbound(WebhookRequest(URL, signed(key, event), event), {}.get).dedupe_id == "m1"

    event = json.dumps({"msg": {"ref": "r-9"}, "id": "per-delivery-attempt", "text": "x"}).encode()
    headers = {"x-signature": hmac.new(b"s", event, hashlib.sha256).hexdigest()}
    opts = {"generic_signature_header": "X-Signature", "generic_webhook_secret": "s", "generic_concatenates": False,
            "http_timeout": 5.0}
    named = GenericJSONProvider({**opts, "generic_fields": {"in_id": "msg.ref"}}, None, reactor)
    assert named.parse_inbound(WebhookRequest(URL, headers, event), {}.get).dedupe_id == "r-9"
    unnamed = GenericJSONProvider({**opts, "generic_fields": {}}, None, reactor)
    assert unnamed.parse_inbound(WebhookRequest(URL, headers, event), {}.get).dedupe_id is None


@pytest_twisted.inlineCallbacks
def test_telnyx_send_request_and_group(http):
    capture, base, pool = http
    _, public = telnyx_keys()
    provider = TelnyxProvider({"telnyx_api_key": "KEY", "telnyx_public_key": public, "api_url": base,
                               "telnyx_tolerance": 300.0, "http_timeout": 5.0, "telnyx_messaging_profile_id": ""},
                              pool, reactor)
    capture.answers = [(200, {"data": {"id": "t1", "parts": 1}}), (200, {"data": {"id": "g1"}}),
                       (422, {"errors": [{"code": "40310", "detail": "Invalid 'to' address"}]})]
    result = yield provider.send(OutboundSMS("+14155550100", ["+12025550143"], "hi", [], URL))
    assert result.id == "t1"
    req = capture.requests[0]
    assert req["path"] == "/v2/messages" and req["headers"]["authorization"] == "Bearer KEY"
    assert json.loads(req["body"]) == {"from": "+14155550100", "to": "+12025550143", "text": "hi",
                                       "webhook_url": URL, "use_profile_webhooks": False}
    yield provider.send(OutboundSMS("+14155550100", ["+12025550143", "+12025550144"], "all", [], None))
    assert capture.requests[1]["path"] == "/v2/messages/group_mms"
    assert json.loads(capture.requests[1]["body"])["to"] == ["+12025550143", "+12025550144"]
    with pytest.raises(PermanentFailure) as refused:
        yield provider.send(OutboundSMS("+14155550100", ["+1"], "x", [], None))
    assert "Invalid 'to' address" in refused.value.text


@pytest_twisted.inlineCallbacks
def test_generic_provider_fields_auth_and_webhooks(http):
    capture, base, pool = http
    opts = {"generic_send_url": base + "/send", "generic_auth_header": "X-Api-Key", "generic_auth_value": "k",
            "generic_fields": {"from": "src", "to": "dst", "body": "msg", "id": "result.ref", "in_from": "src",
                               "in_to": "dst", "in_body": "msg"},
            "generic_signature_header": "X-Signature", "generic_webhook_secret": "hooksecret",
            "generic_concatenates": False, "generic_delivered_values": ["DELIVRD"],
            "generic_failed_values": ["UNDELIV"], "http_timeout": 5.0}
    provider = GenericJSONProvider(opts, pool, reactor)
    capture.answers = [(200, {"result": {"ref": 77}})]
    result = yield provider.send(OutboundSMS("+14155550100", ["+12025550143"], "yo", [], None))
    assert result.id == "77"
    assert capture.requests[0]["headers"]["x-api-key"] == "k"
    assert json.loads(capture.requests[0]["body"]) == {"src": "+14155550100", "dst": "+12025550143", "msg": "yo"}
    event = json.dumps({"src": "+12025550143", "dst": "+14155550100", "msg": "back"}).encode()
    sig = hmac.new(b"hooksecret", event, hashlib.sha256).hexdigest()
    sms = provider.parse_inbound(WebhookRequest(URL, {"x-signature": sig}, event), {}.get)
    assert (sms.sender, sms.recipient, sms.body) == ("+12025550143", "+14155550100", "back")
    with pytest.raises(WebhookRejected):
        provider.parse_inbound(WebhookRequest(URL, {"x-signature": "00" * 32}, event), {}.get)
    status = json.dumps({"id": "77", "status": "DELIVRD"}).encode()
    report = provider.parse_status(WebhookRequest(URL, {"x-signature": hmac.new(
        b"hooksecret", status, hashlib.sha256).hexdigest()}, status), {}.get)
    assert (report.id, report.delivered) == ("77", True)


@pytest_twisted.inlineCallbacks
def test_adapter_splits_for_providers_that_do_not_concatenate(http, tmp_path):
    """
    The adapter, on a real bridge, outbox and registry, in front of a generic API
    that sends one SMS per request and fails part 2 once: the retry resumes at
    part 2 instead of sending part 1 again.
    """
    from twisted.internet import task

    from gateway.adapters.sms import SMSAdapter
    from gateway.bridge import Bridge
    from gateway.model import OutboundMessage, Registration
    from gateway.options import validate_table
    from gateway.registry import SQLRegistry
    from gateway.registry.crypto import SecretBox

    capture, base, _ = http
    problems = []
    options = validate_table({"provider": "generic", "generic_send_url": base + "/send",
                              "generic_webhook_secret": "s", "daily_limit": 10}, SMSAdapter.options, "", problems)
    assert problems == [] and SMSAdapter.check_options(options) == []
    registry = SQLRegistry(f"sqlite:///{tmp_path}/r.sqlite", SecretBox.generate())
    yield registry.open()
    bridge = Bridge("sms.example.org", SMSAdapter, options, registry, reactor,
                    {"retry_initial": 0.1, "retry_max": 0.2, "deadline": 10.0, "lease": 30.0, "poll_interval": 0.1},
                    {"rate": 10.0, "burst": 10})
    reg = Registration("sms.example.org", "u@example.org", "+14155550100")
    yield registry.put_registration(reg)
    bridge.startService()
    try:
        yield bridge.outbox.ready
        capture.answers = [(200, {"id": "a"}), (500, {"error": "try later"}), (200, {"id": "b"}), (200, {"id": "c"})]
        text = "x" * 153 + "y" * 153 + "z" * 47          # GSM-7, 353 septets: 153 + 153 + 47
        yield bridge.submit(OutboundMessage("sms.example.org", "u@example.org", "+12025550143", body=text))
        for _ in range(100):
            if (yield registry.queue_depth("sms.example.org"))["out"] == 0:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        bodies = [json.loads(r["body"])["text"] for r in capture.requests]
        assert bodies == ["x" * 153, "y" * 153, "y" * 153, "z" * 47]
        assert (yield registry.counter("sms.example.org", "u@example.org", "sms",
                                       time.strftime("%Y-%m-%d", time.gmtime()))) == 1
        nothing = yield bridge.adapter.send(OutboundMessage("sms.example.org", "u@example.org", "+12025550143",
                                                            body="   "), reg)
        assert nothing.parts == 0 and len(capture.requests) == 4   # an empty body is never sent
    finally:
        yield bridge.stopService()
        registry.close()
