"""
Any provider with a JSON HTTP API, described in config: where to POST, how to
authenticate (one header), which JSON fields carry what, and how its webhooks
are signed (hex HMAC-SHA256 of the raw body with a shared secret, in a header).
Field names may be dotted paths (``data.id``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from gateway.adapters.sms.providers.base import (MAX_MEDIA, InboundSMS, OutboundSMS, ProviderResult, SMSProvider,
                                                 StatusReport, WebhookRejected, WebhookRequest, as_list, clean)
from gateway.model import PermanentFailure


def dig(data: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


class GenericJSONProvider(SMSProvider):
    name = "generic"
    webhook_reply = (b"application/json", b"{}")

    def __init__(self, options, http_pool, reactor):
        super().__init__(options, http_pool, reactor)
        self.concatenates = options["generic_concatenates"]
        self.f = options["generic_fields"]
        self.passes_status_callback = bool(self.f.get("callback"))

    def send(self, sms: OutboundSMS):
        if len(sms.recipients) != 1:
            raise PermanentFailure("this provider cannot send group texts", "feature-not-implemented")
        f = self.f
        payload = {f.get("from", "from"): sms.sender, f.get("to", "to"): sms.recipients[0],
                   f.get("body", "text"): sms.body}
        if sms.media_urls:
            payload[f.get("media", "media_urls")] = sms.media_urls
        if sms.status_callback and f.get("callback"):
            payload[f["callback"]] = sms.status_callback
        headers = {}
        if self.options["generic_auth_header"]:
            headers[self.options["generic_auth_header"]] = self.options["generic_auth_value"]

        def call():
            response = self.request("POST", self.options["generic_send_url"], json=payload, headers=headers)
            try:
                body = response.json()
            except ValueError:
                body = {}
            self.classify(response, str(dig(body, f.get("error", "error")) or ""))
            message_id = dig(body, f.get("id", "id"))
            if message_id is None:
                raise PermanentFailure("the provider's answer has no message id", "undefined-condition")
            return ProviderResult(id=str(message_id))

        return self.in_thread(call)

    def _verify(self, request: WebhookRequest) -> dict:
        given = request.header(self.options["generic_signature_header"]) or ""
        expected = hmac.new(self.options["generic_webhook_secret"].encode(), request.body, hashlib.sha256).hexdigest()
        if not given or not hmac.compare_digest(given.lower().encode("utf-8", "replace"), expected.encode()):
            raise WebhookRejected("webhook signature does not match")
        try:
            data = json.loads(request.body)
        except (ValueError, RecursionError):
            raise WebhookRejected("not JSON")
        if not isinstance(data, dict):
            raise WebhookRejected("not a JSON object")
        return data

    def parse_inbound(self, request: WebhookRequest, secret_for) -> InboundSMS:
        data, f = self._verify(request), self.f
        media = as_list(dig(data, f.get("in_media", "media_urls")))[:MAX_MEDIA]
        # Only an id the operator named is trusted to stay the same when the provider
        # sends a webhook again; the default field might differ per delivery attempt.
        stable = clean(dig(data, f["in_id"]), 128) if "in_id" in f else ""
        return InboundSMS(sender=clean(dig(data, f.get("in_from", "from")), 128),
                          recipient=clean(dig(data, f.get("in_to", "to")), 128),
                          body=clean(dig(data, f.get("in_body", "text"))),
                          media=[(clean(u, 2048), "") for u in media if clean(u, 2048)],
                          id=clean(dig(data, f.get("in_id", "id")), 128) or None, dedupe_id=stable or None)

    def parse_status(self, request: WebhookRequest, secret_for) -> StatusReport:
        data, f = self._verify(request), self.f
        status = clean(dig(data, f.get("status", "status")), 64)
        delivered = (True if status in self.options["generic_delivered_values"]
                     else False if status in self.options["generic_failed_values"] else None)
        reason = clean(dig(data, f.get("reason", "error")), 500) if delivered is False else ""
        return StatusReport(id=clean(dig(data, f.get("status_id", "id")), 128), delivered=delivered,
                            reason=reason or (f"the message was {status}" if delivered is False else None))
