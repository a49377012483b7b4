"""
SMS and MMS through HTTP provider APIs (Twilio, Telnyx, or any JSON API set in
config). A user registers their sending number; contacts are E.164 numbers at
the component (``+14155550100@sms.example.org``). Inbound messages and delivery
statuses arrive as signed webhooks on the gateway's web site.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import phonenumbers
from prometheus_client import Counter
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web import resource
from zope.interface import implementer

from gateway import metrics
from gateway.adapters.base import AdapterBase, check_daily_limit, utc_day
from gateway.adapters.sms import numbers, segments
from gateway.adapters.sms.providers import (PROVIDERS, OutboundSMS, SendUnconfirmed, WebhookRejected,
                                            WebhookRequest)
from gateway.adapters.sms.providers.base import clean
from gateway.adapters.sms.webhooks import MAX_BODY, WebhookResource
from gateway.interfaces import IWebHooks
from gateway.model import (AddressError, DeliveryReport, Field, InboundMessage, OutboundMessage, PermanentFailure,
                           Registration, RegistrationError, SendResult)
from gateway.options import Option, non_negative, positive

log = Logger(namespace="gateway.adapters.sms")

SEGMENTS = Counter("xmpp_gateway_sms_segments", "SMS segments sent (what carriers bill).", ["component"],
                   registry=metrics.REGISTRY)
UNCONFIRMED = Counter("xmpp_gateway_sms_unconfirmed",
                      "SMS requests whose answer was lost after they were sent: counted as sent, not sent again.",
                      ["component"], registry=metrics.REGISTRY)
WEBHOOKS = Counter("xmpp_gateway_sms_webhooks", "Provider webhooks by kind and outcome.",
                   ["component", "kind", "outcome"], registry=metrics.REGISTRY)

API_URLS = {"twilio": "https://api.twilio.com", "telnyx": "https://api.telnyx.com", "generic": ""}


def _region(value: str) -> str | None:
    if value and value not in phonenumbers.SUPPORTED_REGIONS:
        return f"{value!r} is not a region code phonenumbers knows (e.g. US, GB, DE)"
    return None


def _regions(values: list) -> str | None:
    for v in values:
        if _region(v):
            return _region(v)
    return None


def _e164_list(values: list) -> str | None:
    for v in values:
        try:
            if numbers.normalize(v, None) != v:
                return f"{v!r} is not written in E.164 (+ and digits only)"
        except AddressError as e:
            return e.text
    return None


def sender_address(raw: str, region: str | None) -> str:
    """
    Who sent an inbound text, as the contact's address: E.164 for a phone
    number; short codes and alphanumeric sender ids as sent (stripped, without
    characters no message may carry, at most 64 characters). Whether that can
    be a JID is the XMPP side's to judge (see gateway.xmpp.escaping).
    """
    try:
        return numbers.normalize(raw, region)
    except AddressError:
        return clean(raw, 64).strip()


@implementer(IWebHooks)
class SMSAdapter(AdapterBase):
    name = "sms"
    gateway_type = "sms"
    display_name = "SMS gateway"
    instructions = "Give the phone number you send from, in international format (+14155550100)."
    address_prompt = "Phone number (international, or national in the gateway's region)"
    options = [
        Option("provider", str, "twilio", choices=tuple(PROVIDERS), doc="Which provider API to use."),
        Option("public_url", str, "",
               doc="The gateway's web site as providers reach it (e.g. `https://gw.example.org`): webhook "
                   "URLs and Twilio's signatures are built from it. Required for `twilio`."),
        Option("api_url", str, "", doc="Provider API base URL; default: the provider's own (tests point it "
                                       "at the simulator)."),
        Option("default_region", str, "", check=_region,
               doc="Region for numbers typed in national format (`US`, `GB`); empty: + and country code required."),
        Option("number_pool", list, [], item_type=str, check=_e164_list,
               doc="Numbers of the operator's account users may pick from; empty: users type their own."),
        Option("user_credentials", bool, False,
               doc="Users may give their own provider credentials at registration (Twilio SID and token, "
                   "Telnyx API key), kept encrypted."),
        Option("daily_limit", int, 200, check=non_negative,
               doc="Messages each user may send per UTC day; 0: no limit."),
        Option("allowed_countries", list, [], item_type=str, check=_regions,
               doc="Destination countries (ISO codes) allowed; empty: all."),
        Option("contacts_online", bool, True, doc="Show phone contacts as available so clients let users write."),
        Option("http_threads", int, 8, check=positive, doc="Threads for provider HTTP calls."),
        Option("http_timeout", float, 20.0, check=positive, doc="Seconds to wait for a provider's answer."),
        Option("unconfirmed_timeout", float, 600.0, check=positive,
               doc="A text whose send answer was lost is not sent again; if the provider sends no status "
                   "for it within this many seconds, its sender gets an error saying it was not confirmed."),
        Option("webhook_max_body", int, MAX_BODY, check=positive,
               doc="Largest webhook body accepted, in bytes: a request announcing more is refused with 413 "
                   "from its headers, and a chunked body is cut off with 413 once it passes this."),
        Option("account_sid", str, "", doc="Twilio Account SID."),
        Option("auth_token", str, "", secret=True, doc="Twilio Auth Token (also verifies Twilio's webhooks)."),
        Option("telnyx_api_key", str, "", secret=True, doc="Telnyx API key (v2)."),
        Option("telnyx_public_key", str, "", doc="Telnyx account public key (base64), verifies webhooks."),
        Option("telnyx_messaging_profile_id", str, "", doc="Telnyx messaging profile to send with (optional)."),
        Option("telnyx_tolerance", float, 300.0, check=positive,
               doc="Oldest Telnyx webhook timestamp accepted, in seconds (replay protection)."),
        Option("generic_send_url", str, "", doc="Generic provider: URL to POST messages to."),
        Option("generic_auth_header", str, "Authorization", doc="Generic provider: header carrying the API key."),
        Option("generic_auth_value", str, "", secret=True, doc="Generic provider: that header's value."),
        Option("generic_fields", dict, {},
               doc="Generic provider: JSON field names (dotted paths) for `from`, `to`, `body`, `media`, "
                   "`callback`, `id`, `error`, `in_from`, `in_to`, `in_body`, `in_media`, `in_id`, `status_id`, "
                   "`status`, `reason`."),
        Option("generic_signature_header", str, "X-Signature",
               doc="Generic provider: webhook header with the hex HMAC-SHA256 of the body."),
        Option("generic_webhook_secret", str, "", secret=True, doc="Generic provider: the HMAC key."),
        Option("generic_concatenates", bool, False,
               doc="Generic provider: it sends long texts as one concatenated message (else the gateway splits)."),
        Option("generic_delivered_values", list, ["delivered"], item_type=str,
               doc="Generic provider: status values meaning delivered."),
        Option("generic_failed_values", list, ["failed", "undelivered"], item_type=str,
               doc="Generic provider: status values meaning failed."),
    ]

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> list[tuple[str, str]]:
        """What one provider needs that the others do not."""
        need = {"twilio": ["account_sid", "auth_token", "public_url"],
                "telnyx": ["telnyx_api_key", "telnyx_public_key"],
                "generic": ["generic_send_url", "generic_webhook_secret"]}[opts.get("provider", "twilio")]
        problems = [(k, f"is required with provider = {opts.get('provider')!r}") for k in need if not opts.get(k)]
        if opts.get("provider") == "telnyx" and opts.get("telnyx_public_key"):
            from gateway.adapters.sms.providers.telnyx import load_public_key
            try:
                load_public_key(opts["telnyx_public_key"])
            except Exception:
                problems.append(("telnyx_public_key", "is not a base64 Ed25519 public key"))
        if opts.get("public_url") and not opts["public_url"].startswith(("http://", "https://")):
            problems.append(("public_url", "must start with https:// (or http://)"))
        return problems

    def __init__(self, options: dict[str, Any], context):
        super().__init__(options, context)
        opts = dict(options)
        opts["api_url"] = opts["api_url"] or API_URLS[opts["provider"]]
        self.public_url = opts["public_url"].rstrip("/")
        self.http_pool = ThreadPool(minthreads=0, maxthreads=opts["http_threads"], name="sms-http")
        self.provider = PROVIDERS[opts["provider"]](opts, self.http_pool, context.clock)
        self.features = frozenset({"receipts", "attachments"} | ({"group"} if self.provider.supports_group else set()))
        self.contact_presence = "available" if opts["contacts_online"] else None
        pool = opts["number_pool"]
        number = (Field("number", "Your number", type="list-single", required=True, options=tuple(pool))
                  if pool else Field("number", "Your number (+14155550100)", required=True))
        fields = [number]
        if opts["user_credentials"]:
            if opts["provider"] == "twilio":
                fields += [Field("account_sid", "Your Twilio Account SID (optional)"),
                           Field("auth_token", "Your Twilio Auth Token (optional)", type="text-private")]
            elif opts["provider"] == "telnyx":
                fields += [Field("api_key", "Your Telnyx API key (optional)", type="text-private")]
        self.registration_fields = fields
        #: What a webhook taken is answered (the provider's empty reply).
        self._ok = (200, *self.provider.webhook_reply)
        self._webhook_counters: dict[tuple[str, str], Any] = {}

    def startService(self):
        super().startService()
        self.http_pool.start()

    def stopService(self):
        self.http_pool.stop()
        self.provider.close()
        return super().stopService()

    # -- addresses and registration -----------------------------------------

    def normalize_address(self, text: str) -> str:
        return numbers.normalize(text, self.config["default_region"] or None)

    def validate_registration(self, jid: str, values: dict[str, Any], current: Registration | None):
        try:
            number = self.normalize_address(values.get("number", ""))
        except AddressError as e:
            raise RegistrationError(e.text)
        if self.config["number_pool"] and number not in self.config["number_pool"]:
            raise RegistrationError(f"{number} is not one of this gateway's numbers")
        secrets = {k: values[k] for k in ("account_sid", "auth_token", "api_key") if values.get(k)}
        settings = {"account_sid": secrets.pop("account_sid")} if "account_sid" in secrets else {}
        return number, settings, secrets

    def registration_values(self, registration: Registration) -> dict[str, Any]:
        return {"number": registration.foreign_id, **registration.settings}

    # -- sending ------------------------------------------------------------

    def _check_destination(self, number: str) -> None:
        allowed = self.config["allowed_countries"]
        if allowed:
            where = numbers.country(number) or "an unknown country"
            if where not in allowed:
                raise PermanentFailure(f"texts to {where} are not allowed by this gateway "
                                       f"(allowed: {', '.join(allowed)})", "policy-violation")

    def _status_url(self, message: OutboundMessage, index: int, count: int) -> str | None:
        """
        Where the provider reports on one request. The URL names our stable
        message id, so a status finds the message even when the answer that
        carried the provider's id was lost; for a split text, which part it is.
        """
        if not self.public_url:
            return None
        query = {"gw_id": message.id}
        if count > 1:
            query.update(part=str(index + 1), parts=str(count))
        return (f"{self.public_url}/hooks/{self.context.component}/{self.provider.name}/status?"
                + urllib.parse.urlencode(query))

    @defer.inlineCallbacks
    def send(self, message: OutboundMessage, registration: Registration):
        """
        Send a text as one request, or (for a provider that does not
        concatenate) one per part. ``message.progress["sent"]`` counts the
        requests the provider took, kept durable between parts, so a retry or
        a restart goes on with the next part instead of texting earlier ones
        twice; a request whose answer was lost counts as taken (see
        SendUnconfirmed).
        """
        body = message.body or ""
        if message.subject:
            body = f"{message.subject}\n{body}" if body else message.subject
        if not body.strip() and not message.attachments:
            return SendResult(parts=0)  # empty bodies and chat states are never sent as SMS
        recipients = list(message.group) or [message.recipient]
        for number in recipients:
            self._check_destination(number)
        component = self.context.component
        progress = message.progress
        done = int(progress.get("sent", 0))
        day = utc_day()
        if not done:   # a text the provider took part of was within the limit when it started
            yield check_daily_limit(self.context, registration.jid, "sms", self.config["daily_limit"])
        parts = segments.split(body) if body else [""]
        credentials = {**registration.secrets, **registration.settings} if self.config["user_credentials"] else {}
        pieces = [body] if self.provider.concatenates or len(parts) == 1 else parts
        ids = progress.setdefault("ids", [])
        unconfirmed = None in ids
        for i in range(done, len(pieces)):
            try:
                result = yield self.provider.send(OutboundSMS(
                    sender=registration.foreign_id, recipients=recipients, body=pieces[i],
                    media_urls=list(message.attachments) if i == 0 else [],
                    status_callback=self._status_url(message, i, len(pieces)), credentials=credentials))
                ids.append(result.id)
            except SendUnconfirmed as e:
                UNCONFIRMED.labels(component).inc()
                log.warn("{id}: part {part} of {parts} to {recipient} is unconfirmed ({why}): not sent again; "
                         "the provider's status callback will tell", id=message.id, part=i + 1, parts=len(pieces),
                         recipient=message.recipient, why=str(e))
                ids.append(None)
                unconfirmed = True
            progress["sent"] = i + 1
            SEGMENTS.labels(component).inc((1 if len(pieces) > 1 else len(parts)) * len(recipients))
            if len(pieces) > 1:
                yield self.context.checkpoint(message)
        yield self.context.add_to_counter(registration.jid, "sms", day)
        named = self.public_url and self.provider.passes_status_callback
        # An unconfirmed part is not sent again; if no status comes for it, the sender is told (never silence).
        return SendResult(foreign_id=message.id if named else (ids[-1] if ids else None), delivered=False,
                          parts=len(parts) if body else 1,
                          confirm_within=self.config["unconfirmed_timeout"] if unconfirmed else None,
                          split_notice=segments.split_notice(len(parts)) if body else None)

    # -- webhooks -----------------------------------------------------------

    def web_resources(self) -> dict[str, resource.Resource]:
        limit = self.config["webhook_max_body"]
        mount = resource.Resource()
        mount.max_body = limit     # enforced by the site while the request arrives (gateway.web.limits)
        mount.putChild(b"inbound", WebhookResource(self, "inbound", limit))
        mount.putChild(b"status", WebhookResource(self, "status", limit))
        return {self.provider.name: mount}

    @defer.inlineCallbacks
    def _user_secrets(self, request: WebhookRequest):
        """Per-user webhook secrets (Twilio tokens) for the numbers a webhook names, before it is trusted."""
        if not self.config["user_credentials"]:
            return {}
        form = request.form()
        found = {}
        for key in ("To", "From"):
            number = (form.get(key) or [""])[0]
            if number:
                reg = yield self.context.registration_by_foreign_id(number)
                if reg is not None and reg.secrets.get("auth_token"):
                    found[number] = reg.secrets["auth_token"]
        return found

    def _counted(self, kind: str, outcome: str) -> None:
        counter = self._webhook_counters.get((kind, outcome))
        if counter is None:
            counter = self._webhook_counters[(kind, outcome)] = WEBHOOKS.labels(self.context.component, kind, outcome)
        counter.inc()

    def handle_webhook(self, kind: str, request: WebhookRequest):
        """
        A provider's webhook: (code, content type, body) to answer, or a
        Deferred of it. An inbound text is answered 200 only once it is stored.
        Plain calls and callbacks rather than inlineCallbacks on the common
        path (an inbound text without media, no per-user credentials): each
        generator layer cost more than the rest of the adapter's own work.
        """
        if self.config["user_credentials"]:
            return self._user_secrets(request).addCallback(lambda secrets: self._handle(kind, request, secrets))
        return self._handle(kind, request, {})

    def _handle(self, kind: str, request: WebhookRequest, secrets: dict):
        try:
            if kind == "inbound":
                sms = self.provider.parse_inbound(request, secrets.get)
            else:
                report = self.provider.parse_status(request, secrets.get)
        except WebhookRejected as e:
            self._counted(kind, "rejected")
            log.warn("refused a {kind} webhook: {why}", kind=kind, why=str(e))
            return 403, b"text/plain", b"forbidden\n"
        if kind == "status":
            return self._status(request, report)
        return self.context.registration_by_foreign_id(sms.recipient).addCallback(self._inbound, sms)

    def _inbound(self, reg: Registration | None, sms):
        if reg is None:
            self._counted("inbound", "unknown-number")
            log.info("inbound SMS to {number}, which no user has registered: not delivered", number=sms.recipient)
            return self._ok  # 200, so the provider does not retry a message nobody can receive
        sender = sender_address(sms.sender, self.config["default_region"] or None)
        if sms.media:
            return self._inbound_with_media(reg, sms, sender)
        return self.context.deliver(self._message(reg, sms, sender, [])).addCallback(self._delivered)

    @defer.inlineCallbacks
    def _inbound_with_media(self, reg: Registration, sms, sender: str):
        media = []
        for url, _ in sms.media:
            # On the user's own server (XEP-0363) when it has an upload service; else the provider's URL.
            media.append((yield self.context.rehost(reg.jid, url)))
        yield self.context.deliver(self._message(reg, sms, sender, media))
        return self._delivered(None)

    def _message(self, reg: Registration, sms, sender: str, media: list) -> InboundMessage:
        return InboundMessage(component=self.context.component, user=reg.jid, sender=sender, body=sms.body or None,
                              attachments=media, foreign_id=sms.id,
                              dedupe_key=f"{self.provider.name}:{sms.dedupe_id}" if sms.dedupe_id else None)

    def _delivered(self, _):
        self._counted("inbound", "delivered")
        return self._ok

    @defer.inlineCallbacks
    def _status(self, request: WebhookRequest, report):
        self._counted("status", "accepted")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query)
        ours = (query.get("gw_id") or [""])[0]
        # A split text is delivered when its last part is; any part failing fails it.
        final = (query.get("part") or ["1"])[0] == (query.get("parts") or ["1"])[0]
        foreign_id = ours or report.id       # without gw_id: a message sent before statuses named ours
        if report.delivered is None and foreign_id:
            yield self.context.confirmed(foreign_id)      # queued/sent: the provider has it
        if report.delivered is not None and foreign_id and (final or report.delivered is False):
            yield self.context.report(DeliveryReport(self.context.component, "", foreign_id, report.delivered,
                                                     None if report.delivered else "recipient-unavailable",
                                                     report.reason))
        return self._ok
