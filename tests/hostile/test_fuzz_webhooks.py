"""
Property-based fuzzing of every SMS provider's webhook parser, called
directly with arbitrary bodies and headers. A forged request must be refused
(WebhookRejected, the one documented refusal: 403), and a validly signed one
of any shape (the provider's key may leak, or the provider may have a bug)
must parse without any other exception into text the gateway can pass on:
strings without characters XML cannot carry, bounded media, and a sender
that is E.164 or a cleaned alphanumeric id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from urllib.parse import urlencode

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, strategies as st
from twisted.internet import reactor

from gateway.adapters.sms import sender_address
from gateway.adapters.sms.providers import (GenericJSONProvider, InboundSMS, StatusReport, TelnyxProvider,
                                            TwilioProvider, WebhookRejected, WebhookRequest)
from gateway.adapters.sms.providers.base import MAX_MEDIA
from gateway.testing.twilio_simulator import twilio_signature

URL = "https://gw.example.org/hooks/sms.example.org/p/inbound"
TOKEN = "fuzz-auth-token"
SECRET = "fuzz-generic-secret"
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
E164 = re.compile(r"^\+[1-9]\d{1,14}$")

TELNYX_KEY = Ed25519PrivateKey.generate()
TELNYX_PUBLIC = base64.b64encode(TELNYX_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()

BASE = {"http_timeout": 5.0, "api_url": "http://127.0.0.1:1"}
TWILIO = TwilioProvider({**BASE, "account_sid": "AC1", "auth_token": TOKEN}, None, reactor)
TELNYX = TelnyxProvider({**BASE, "telnyx_api_key": "K", "telnyx_public_key": TELNYX_PUBLIC, "telnyx_tolerance": 300.0,
                         "telnyx_messaging_profile_id": ""}, None, reactor)
GENERIC = GenericJSONProvider({**BASE, "generic_send_url": "http://127.0.0.1:1", "generic_auth_header": "",
                               "generic_auth_value": "", "generic_signature_header": "X-Signature",
                               "generic_webhook_secret": SECRET, "generic_concatenates": False,
                               "generic_fields": {"in_id": "ref", "in_media": "media"},
                               "generic_delivered_values": ["delivered"], "generic_failed_values": ["failed"]},
                              None, reactor)

texts = st.text(max_size=60)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
                           max_leaves=20)


def shaped(known: dict) -> st.SearchStrategy:
    """JSON objects that have the provider's field names, with values of any type (or the right one)."""
    return st.fixed_dictionaries({}, optional={k: json_values | v for k, v in known.items()})


def carried(text) -> bool:
    return isinstance(text, str) and not NOT_XML.search(text)


def check_inbound(sms: InboundSMS) -> None:
    for text in (sms.sender, sms.recipient, sms.body):
        assert carried(text)
    assert sms.id is None or carried(sms.id)
    assert sms.dedupe_id is None or carried(sms.dedupe_id)
    assert len(sms.media) <= MAX_MEDIA
    for url, kind in sms.media:
        assert carried(url) and url and carried(kind)
    sender = sender_address(sms.sender, "US")
    assert E164.match(sender) or (carried(sender) and sender == sender.strip() and len(sender) <= 64)


def check_status(report: StatusReport) -> None:
    assert carried(report.id) and report.delivered in (True, False, None)
    assert report.reason is None or carried(report.reason)


# -- Twilio -----------------------------------------------------------------------

form_params = st.lists(st.tuples(st.sampled_from(["From", "To", "Body", "MessageSid", "SmsSid", "NumMedia",
                                                  "MediaUrl0", "MediaContentType0", "MediaUrl11", "MessageStatus",
                                                  "ErrorCode"]) | texts, texts), max_size=12)


@given(form_params, st.sampled_from(["inbound", "status"]))
def test_twilio_signed_forms_of_any_shape_parse_clean(params, kind):
    req = WebhookRequest(URL, {"x-twilio-signature": twilio_signature(TOKEN, URL, params)},
                         urlencode(params).encode())
    try:
        result = TWILIO.parse_inbound(req, {}.get) if kind == "inbound" else TWILIO.parse_status(req, {}.get)
    except WebhookRejected:
        # Only when the form's own decoding changed what was signed (replacement characters).
        return
    check_inbound(result) if kind == "inbound" else check_status(result)


@given(st.binary(max_size=300), st.dictionaries(st.sampled_from(["x-twilio-signature", "content-type"]) | texts,
                                                texts, max_size=3))
def test_twilio_unsigned_bytes_are_refused(body, headers):
    try:
        TWILIO.parse_inbound(WebhookRequest(URL, headers, body), {}.get)
    except WebhookRejected:
        return
    raise AssertionError("a request without a valid signature was accepted")


def test_twilio_num_media_is_bounded():
    params = [("From", "+12025550143"), ("To", "+14155550100"), ("NumMedia", "999999999")] + \
        [(f"MediaUrl{i}", f"https://m/{i}") for i in range(20)]
    req = WebhookRequest(URL, {"x-twilio-signature": twilio_signature(TOKEN, URL, params)}, urlencode(params).encode())
    started = time.monotonic()
    assert len(TWILIO.parse_inbound(req, {}.get).media) == MAX_MEDIA
    assert time.monotonic() - started < 1.0


# -- Telnyx -----------------------------------------------------------------------

telnyx_payloads = shaped({"id": texts, "text": texts, "from": st.fixed_dictionaries({"phone_number": texts}),
                          "to": st.lists(st.fixed_dictionaries({"phone_number": texts, "status": texts}), max_size=2),
                          "media": st.lists(st.fixed_dictionaries({"url": texts, "content_type": texts}),
                                            max_size=12),
                          "errors": st.lists(st.fixed_dictionaries({"detail": texts}), max_size=2)})
telnyx_bodies = (st.builds(lambda p, d: json.dumps({"data": {"id": d, "payload": p}}), telnyx_payloads, texts)
                 | st.builds(lambda v: json.dumps({"data": v}), json_values)
                 | st.builds(json.dumps, json_values)
                 | st.just("[" * 5000 + "]" * 5000)
                 | st.text(max_size=100))


@given(telnyx_bodies, st.sampled_from(["inbound", "status"]))
def test_telnyx_signed_events_of_any_shape_parse_clean(text, kind):
    body = text.encode("utf-8", "surrogatepass")
    stamp = str(int(time.time()))
    headers = {"telnyx-signature-ed25519": base64.b64encode(TELNYX_KEY.sign(stamp.encode() + b"|" + body)).decode(),
               "telnyx-timestamp": stamp}
    req = WebhookRequest(URL, headers, body)
    try:
        result = TELNYX.parse_inbound(req, {}.get) if kind == "inbound" else TELNYX.parse_status(req, {}.get)
    except WebhookRejected:
        return
    check_inbound(result) if kind == "inbound" else check_status(result)


@given(st.binary(max_size=200), texts, texts)
def test_telnyx_forged_headers_are_refused(body, signature, stamp):
    req = WebhookRequest(URL, {"telnyx-signature-ed25519": signature, "telnyx-timestamp": stamp}, body)
    try:
        TELNYX.parse_inbound(req, {}.get)
    except WebhookRejected:
        return
    raise AssertionError("a forged Telnyx event was accepted")


def test_telnyx_absurd_timestamps_are_refused():
    for stamp in ("9" * 400, "-" + "9" * 400, "1e9", "\u0663\u0663"):
        req = WebhookRequest(URL, {"telnyx-signature-ed25519": "AAAA", "telnyx-timestamp": stamp}, b"{}")
        try:
            TELNYX.parse_inbound(req, {}.get)
        except WebhookRejected:
            continue
        raise AssertionError(stamp)


# -- generic JSON -----------------------------------------------------------------

generic_bodies = (st.builds(json.dumps, shaped({"from": texts, "to": texts, "text": texts, "id": texts, "ref": texts,
                                                "media": st.lists(texts, max_size=12), "status": texts,
                                                "error": texts}))
                  | st.builds(json.dumps, json_values)
                  | st.just('{"a":' * 3000 + "1" + "}" * 3000)
                  | st.text(max_size=100))


@given(generic_bodies, st.sampled_from(["inbound", "status"]))
def test_generic_signed_bodies_of_any_shape_parse_clean(text, kind):
    body = text.encode("utf-8", "surrogatepass")
    req = WebhookRequest(URL, {"x-signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}, body)
    try:
        result = GENERIC.parse_inbound(req, {}.get) if kind == "inbound" else GENERIC.parse_status(req, {}.get)
    except WebhookRejected:
        return
    check_inbound(result) if kind == "inbound" else check_status(result)


@given(st.binary(max_size=200), texts)
def test_generic_forged_signatures_are_refused(body, signature):
    try:
        GENERIC.parse_inbound(WebhookRequest(URL, {"x-signature": signature}, body), {}.get)
    except WebhookRejected:
        return
    raise AssertionError("a forged generic webhook was accepted")
