"""
Twilio's Messages API: a form POST to /2010-04-01/Accounts/{AccountSid}/Messages.json
with basic auth and a StatusCallback URL; webhooks (inbound and status) signed with
X-Twilio-Signature: base64 HMAC-SHA1, keyed with the auth token, over the full URL
followed by every POST parameter name and value, sorted by name.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from urllib.parse import urlsplit, urlunsplit

from gateway.adapters.sms.providers.base import (MAX_MEDIA, InboundSMS, OutboundSMS, ProviderResult, SMSProvider,
                                                 StatusReport, WebhookRejected, WebhookRequest, clean)
from gateway.model import PermanentFailure

#: Twilio error codes users can act on, for the error stanza's text.
ERROR_TEXT = {
    "30003": "the destination handset is unreachable",
    "30004": "the message is blocked by the recipient",
    "30005": "the destination number is unknown or no longer in service",
    "30006": "the destination is a landline or cannot receive SMS",
    "30007": "the carrier filtered the message",
    "30008": "the carrier reported an unknown error",
    "21610": "the recipient has unsubscribed (replied STOP)",
    "21211": "the destination number is not valid",
    "21408": "sending to this region is not enabled on the gateway's account",
    "21614": "the destination number cannot receive SMS",
}


def signature(auth_token: str, url: str, params: dict[str, list[str]]) -> str:
    """
    Twilio's X-Twilio-Signature for ``url`` and the form ``params``. Every
    webhook computes it, so the common field of one value skips the sort and
    set of its values (tests/unit/test_webhook_forms.py compares the result
    with the plain algorithm). The MAC stays an HMAC object: the one-shot
    ``hmac.digest`` is faster alone but gives the GIL away on every call, and
    the reactor then waited for the SQLite thread to give it back.
    """
    data = url
    for name in sorted(params):
        try:
            (value,) = params[name]         # the common field: one value, nothing to sort
        except ValueError:
            for value in sorted(set(params[name])):
                data += name + value
        else:
            data += name + value
    mac = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


@functools.lru_cache(maxsize=32)
def _url_variants(url: str) -> tuple[str, ...]:
    """
    Twilio signs the URL as configured; proxies may add or drop the default
    port. Cached (pure; 32 URLs of at most the request line's 16 KiB): every
    webhook of a kind has the same URL.
    """
    parts = urlsplit(url)
    variants = [url]
    default = 443 if parts.scheme == "https" else 80
    if parts.port is None:
        variants.append(urlunsplit(parts._replace(netloc=f"{parts.hostname}:{default}")))
    elif parts.port == default:
        variants.append(urlunsplit(parts._replace(netloc=parts.hostname)))
    return tuple(variants)


class TwilioProvider(SMSProvider):
    name = "twilio"
    concatenates = True
    webhook_reply = (b"text/xml", b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>')

    def _credentials(self, sms: OutboundSMS) -> tuple[str, str]:
        if sms.credentials.get("account_sid") and sms.credentials.get("auth_token"):
            return sms.credentials["account_sid"], sms.credentials["auth_token"]
        return self.options["account_sid"], self.options["auth_token"]

    def send(self, sms: OutboundSMS):
        if len(sms.recipients) != 1:
            raise PermanentFailure("Twilio's Messages API cannot send group texts", "feature-not-implemented")
        sid, token = self._credentials(sms)
        url = f"{self.options['api_url'].rstrip('/')}/2010-04-01/Accounts/{sid}/Messages.json"
        data = [("To", sms.recipients[0]), ("From", sms.sender), ("Body", sms.body)]
        data += [("MediaUrl", u) for u in sms.media_urls]
        if sms.status_callback:
            data.append(("StatusCallback", sms.status_callback))

        def call():
            response = self.request("POST", url, data=data, auth=(sid, token))
            try:
                payload = response.json()
            except ValueError:
                payload = {}
            code = str(payload.get("code") or "")
            detail = ERROR_TEXT.get(code) or payload.get("message") or ""
            self.classify(response, detail + (f" (Twilio error {code})" if code else ""))
            segments = payload.get("num_segments")
            return ProviderResult(id=payload["sid"], segments=int(segments) if segments else None)

        return self.in_thread(call)

    def _verify(self, request: WebhookRequest, secret_for) -> dict[str, list[str]]:
        given = request.header("X-Twilio-Signature")
        if not given:
            raise WebhookRejected("no X-Twilio-Signature")
        params = request.form()
        number = (params.get("To") or [""])[0]
        token = secret_for(number) or self.options["auth_token"]
        for url in _url_variants(request.url):
            # As bytes: compare_digest refuses str with non-ASCII characters, which a forger may send.
            if hmac.compare_digest(signature(token, url, params).encode(), given.encode("utf-8", "replace")):
                return params
        raise WebhookRejected("X-Twilio-Signature does not match")

    def parse_inbound(self, request: WebhookRequest, secret_for) -> InboundSMS:
        p = self._verify(request, secret_for)
        first = lambda k, limit=None: clean((p.get(k) or [""])[0], limit)  # noqa: E731
        count = first("NumMedia", 8)
        # NumMedia is the signer's word, but a number no loop should trust: at most MAX_MEDIA.
        count = min(int(count), MAX_MEDIA) if count.isdecimal() and count.isascii() else 0
        media = [(first(f"MediaUrl{i}", 2048), first(f"MediaContentType{i}", 128)) for i in range(count)]
        sid = first("MessageSid", 128) or first("SmsSid", 128) or None      # SmsSid: the older name, still sent
        return InboundSMS(sender=first("From", 128), recipient=first("To", 128), body=first("Body"),
                          media=[m for m in media if m[0]], id=sid, dedupe_id=sid)

    def parse_status(self, request: WebhookRequest, secret_for) -> StatusReport:
        p = self._verify(request, secret_for)
        first = lambda k: clean((p.get(k) or [""])[0], 128)  # noqa: E731
        status = first("MessageStatus") or first("SmsStatus")
        delivered = True if status == "delivered" else False if status in ("failed", "undelivered") else None
        reason = None
        if delivered is False:
            code = first("ErrorCode")
            reason = ERROR_TEXT.get(code, f"the message was {status}") + (f" (Twilio error {code})" if code else "")
        return StatusReport(id=first("MessageSid") or first("SmsSid"), delivered=delivered, reason=reason)
