"""
Telnyx Messaging API v2: JSON POST to /v2/messages (group MMS: /v2/messages/group_mms)
with a Bearer API key. Webhooks carry an Ed25519 signature (telnyx-signature-ed25519,
base64) over "{telnyx-timestamp}|{raw body}", checked with the account's public key;
timestamps older than the tolerance are refused so a captured webhook cannot be replayed.
"""

from __future__ import annotations

import base64
import json
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.adapters.sms.providers.base import (MAX_MEDIA, InboundSMS, OutboundSMS, ProviderResult, SMSProvider,
                                                 StatusReport, WebhookRejected, WebhookRequest, as_dict, as_list,
                                                 clean)


def load_public_key(text: str) -> Ed25519PublicKey:
    raw = base64.b64decode(text.strip(), validate=True)
    return Ed25519PublicKey.from_public_bytes(raw)


class TelnyxProvider(SMSProvider):
    name = "telnyx"
    concatenates = True
    supports_group = True
    webhook_reply = (b"application/json", b"{}")

    def __init__(self, options, http_pool, reactor):
        super().__init__(options, http_pool, reactor)
        self.public_key = load_public_key(options["telnyx_public_key"])

    def send(self, sms: OutboundSMS):
        key = sms.credentials.get("api_key") or self.options["telnyx_api_key"]
        base = self.options["api_url"].rstrip("/")
        group = len(sms.recipients) > 1
        url = f"{base}/v2/messages/group_mms" if group else f"{base}/v2/messages"
        payload = {"from": sms.sender, "to": sms.recipients if group else sms.recipients[0], "text": sms.body}
        if sms.media_urls:
            payload["media_urls"] = sms.media_urls
        if sms.status_callback:
            payload["webhook_url"] = sms.status_callback
            payload["use_profile_webhooks"] = False
        if self.options.get("telnyx_messaging_profile_id"):
            payload["messaging_profile_id"] = self.options["telnyx_messaging_profile_id"]

        def call():
            response = self.request("POST", url, json=payload, headers={"Authorization": f"Bearer {key}"})
            try:
                body = response.json()
            except ValueError:
                body = {}
            errors = body.get("errors") or []
            detail = "; ".join(e.get("detail") or e.get("title") or "" for e in errors if isinstance(e, dict))
            self.classify(response, detail)
            data = body.get("data") or {}
            return ProviderResult(id=data["id"], segments=data.get("parts"))

        return self.in_thread(call)

    def _verify(self, request: WebhookRequest) -> dict:
        sig = request.header("telnyx-signature-ed25519")
        stamp = request.header("telnyx-timestamp")
        if not sig or not stamp:
            raise WebhookRejected("no Telnyx signature headers")
        try:
            if abs(time.time() - int(stamp)) > self.options["telnyx_tolerance"]:
                raise WebhookRejected("Telnyx timestamp outside the tolerance (a replay?)")
            self.public_key.verify(base64.b64decode(sig), stamp.encode() + b"|" + request.body)
        except (InvalidSignature, ValueError, OverflowError) as e:
            raise WebhookRejected(f"Telnyx signature does not verify ({type(e).__name__})")
        try:
            data = json.loads(request.body)["data"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise WebhookRejected("not a Telnyx event")
        if not isinstance(data, dict):
            raise WebhookRejected("not a Telnyx event")
        return data

    def parse_inbound(self, request: WebhookRequest, secret_for) -> InboundSMS:
        data = self._verify(request)
        p = as_dict(data.get("payload"))
        to = as_dict((as_list(p.get("to")) or [{}])[0])
        media = [(clean(m.get("url"), 2048), clean(m.get("content_type"), 128))
                 for m in map(as_dict, as_list(p.get("media"))[:MAX_MEDIA])]
        # The message's id names the message however often its event is sent; the
        # event's own id (data.id) stands in only if a payload lacks it.
        message_id = clean(p.get("id"), 128) or clean(data.get("id"), 128)
        return InboundSMS(sender=clean(as_dict(p.get("from")).get("phone_number"), 128),
                          recipient=clean(to.get("phone_number"), 128), body=clean(p.get("text")),
                          media=[m for m in media if m[0]], id=clean(p.get("id"), 128) or None,
                          dedupe_id=message_id or None)

    def parse_status(self, request: WebhookRequest, secret_for) -> StatusReport:
        data = self._verify(request)
        p = as_dict(data.get("payload"))
        status = clean(as_dict((as_list(p.get("to")) or [{}])[0]).get("status"), 64)
        delivered = True if status == "delivered" else False if status in (
            "delivery_failed", "sending_failed", "delivery_unconfirmed") else None
        reason = None
        if delivered is False:
            errors = [as_dict(e) for e in as_list(p.get("errors"))]
            reason = "; ".join(clean(e.get("detail"), 500) or clean(e.get("title"), 500) for e in errors) or \
                f"the message was {status}"
        return StatusReport(id=clean(p.get("id"), 128), delivered=delivered, reason=reason)
