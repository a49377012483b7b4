"""
A webhook's form is read by gateway.adapters.sms.providers.base.parse_form
(issue 11): whatever the body, the same fields, values and order as
``urllib.parse.parse_qs(..., keep_blank_values=True)``, which it replaces,
and far fewer calls for the forms providers send.
"""

from __future__ import annotations

import sys
import urllib.parse

from hypothesis import given, settings, strategies as st

from gateway.adapters.sms.providers.base import WebhookRequest, parse_form
from tests.benchmarks.inbound_path import webhook_request


def reference(text: str) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(text, keep_blank_values=True)


def _same(text: str) -> None:
    got = parse_form(text)
    want = reference(text)
    assert got == want, text
    assert list(got) == list(want), text          # the same order of names too


#: The characters a form's syntax turns on, percent escapes (valid, truncated, of
#: broken UTF-8), and anything else.
_PIECES = st.one_of(st.sampled_from(["&", "=", "+", "%", "%2", "%2B", "%26", "%3D", "%25", "%C3%A9", "%C3", "%FF",
                                     "%zz", "&&", "==", ";", " ", "\x00", "é", "\ud7ff", "\U0001f600"]),
                    st.text(max_size=6))


@settings(max_examples=800, deadline=None)
@given(st.lists(_PIECES, max_size=40).map("".join))
def test_hostile_forms_parse_the_same(text):
    _same(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=30)), max_size=25))
def test_encoded_forms_round_trip_the_same(fields):
    _same(urllib.parse.urlencode(fields))
    _same(urllib.parse.urlencode(fields, quote_via=urllib.parse.quote))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_body_gives_the_same_form(body):
    assert WebhookRequest("https://gw.example/hook", {}, body).form() == reference(body.decode("utf-8", "replace"))


def test_edges():
    for text in ("", "&", "=", "a", "a=", "=b", "a=b=c", "a&a=1&a", "+=+", "%=%", "a=%zz%", "a=1&&b=2&"):
        _same(text)


def _python_calls(fn) -> int:
    """Python function calls made by ``fn()`` (not C calls): the same on any machine."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event == "call":
            count += 1
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def test_a_twilio_webhooks_form_takes_few_calls():
    """Before: parse_qs, parse_qsl, its argument coercions and two unquote calls per field, about 80."""
    body = webhook_request(7, "T").split(b"\r\n\r\n", 1)[1]
    request = WebhookRequest("https://gw.example/hook", {}, body)
    calls = _python_calls(request.form)
    assert calls <= 10, calls
    assert request.form()["MessageSid"] and request.form()["From"] == ["+12025550143"]


# -- the Twilio signature (gateway.adapters.sms.providers.twilio.signature) -----------------------

def reference_signature(auth_token: str, url: str, params: dict[str, list[str]]) -> str:
    """Twilio's algorithm as written before: every name's values sorted and deduplicated, an HMAC object."""
    import base64
    import hashlib
    import hmac
    data = url
    for name in sorted(params):
        for value in sorted(set(params[name])):
            data += name + value
    return base64.b64encode(hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
                            ).decode("ascii")


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=600, deadline=None)
@given(_TEXT, _TEXT, st.dictionaries(_TEXT, st.lists(_TEXT, max_size=4), max_size=12))
def test_the_signature_is_twilios_on_any_form(token, url, params):
    from gateway.adapters.sms.providers.twilio import signature
    assert signature(token, url, params) == reference_signature(token, url, params)


def test_the_signature_of_a_webhook_and_of_repeated_fields():
    from gateway.adapters.sms.providers.twilio import signature
    body = webhook_request(3, "S").split(b"\r\n\r\n", 1)[1]
    form = parse_form(body.decode())
    for params in (form, {**form, "MediaUrl0": ["b", "a", "b"]}, {"a": []}, {}):
        assert signature("tok", "https://gw.example/h", params) == reference_signature("tok", "https://gw.example/h",
                                                                                        params)


def _all_calls(fn) -> int:
    """Python and C calls made by ``fn()``: the same on any machine."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event in ("call", "c_call"):
            count += 1
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def test_the_signature_takes_fewer_calls():
    """Before: as many as the reference (a sort and a set of the values of each of the 19 fields)."""
    from gateway.adapters.sms.providers.twilio import signature
    form = parse_form(webhook_request(3, "S").split(b"\r\n\r\n", 1)[1].decode())
    calls = _all_calls(lambda: signature("tok", "https://gw.example/h", form))
    before = _all_calls(lambda: reference_signature("tok", "https://gw.example/h", form))
    assert calls < 0.75 * before, (calls, before)
