"""
What every SMS provider does: send a message over its HTTP API, and turn its
webhooks (inbound messages, delivery statuses) into neutral reports after
checking they really come from the provider.

HTTP calls use ``requests`` with one Session per provider (connection pooling)
in a dedicated thread pool, so the reactor never waits on the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import unquote

import requests
import urllib3.exceptions
from twisted.internet import threads
from twisted.logger import Logger

from gateway.model import PermanentFailure, TemporaryFailure

log = Logger(namespace="gateway.adapters.sms")


@dataclass
class OutboundSMS:
    sender: str
    recipients: list[str]
    body: str
    media_urls: list[str] = field(default_factory=list)
    status_callback: str | None = None
    #: Per-user provider credentials, when the operator allows them.
    credentials: dict[str, str] = field(default_factory=dict)


@dataclass
class ProviderResult:
    id: str
    #: The provider's own segment count, when it says.
    segments: int | None = None


@dataclass
class InboundSMS:
    sender: str
    recipient: str
    body: str
    media: list[tuple[str, str]] = field(default_factory=list)   # (url, content type)
    id: str | None = None
    #: The provider's own id for this message, the same when it sends the
    #: webhook again (a retry, a replay): repeats are recognised by it. None
    #: when the provider gives no such id.
    dedupe_id: str | None = None


@dataclass
class StatusReport:
    id: str
    #: True delivered, False failed, None an intermediate state (queued, sent).
    delivered: bool | None
    reason: str | None = None


def parse_form(text: str) -> dict[str, list[str]]:
    """
    ``urllib.parse.parse_qs(text, keep_blank_values=True)``, the same result
    (tests/unit/test_webhook_forms.py compares them on random and hostile
    forms) at a fraction of the cost: a Twilio webhook's 19 fields took 38
    calls of ``unquote`` and its helpers, where most names and values hold
    neither ``+`` nor ``%`` and need nothing done. Bounded by the body, which
    the site bounds (MAX_BODY).
    """
    form: dict[str, list[str]] = {}
    for item in text.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        if "+" in name:
            name = name.replace("+", " ")
        if "%" in name:
            name = unquote(name)
        if "+" in value:
            value = value.replace("+", " ")
        if "%" in value:
            value = unquote(value)
        values = form.get(name)
        if values is None:
            form[name] = [value]
        else:
            values.append(value)
    return form


@dataclass
class WebhookRequest:
    #: The URL exactly as the provider called it (public_url + path): signatures cover it.
    url: str
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, list[str]]:
        """The form body, parsed once: the per-user secret lookup and the signature check both read it."""
        form = self.__dict__.get("_form")
        if form is None:
            form = self.__dict__["_form"] = parse_form(self.body.decode("utf-8", "replace"))
        return form

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class SendUnconfirmed(Exception):
    """
    The request may have reached the provider, but its answer was lost (a read
    timeout, a connection broken after the request went out). Neither "sent"
    nor "failed" is known, and Twilio, Telnyx and the generic API have no
    idempotency key for sending: trying again could text the recipient twice,
    so the adapter treats the message as sent and lets status callbacks tell.
    """


class WebhookRejected(Exception):
    """Not from the provider (bad or missing signature): answered 403, nothing delivered."""


#: Characters no text the gateway passes on may hold (XML 1.0 cannot carry them,
#: and nothing a person wrote needs them): C0 controls but TAB, LF and CR,
#: lone surrogates, U+FFFE and U+FFFF.
_UNCARRIABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

#: At most this many media items are taken from one webhook (Twilio sends up to 10).
MAX_MEDIA = 10


def clean(value: Any, limit: int | None = None) -> str:
    """
    A provider's field as text the gateway can pass on: strings and numbers
    as text, anything else (objects, lists, null: a payload of the wrong
    shape) as empty; characters no message may carry removed; cut at ``limit``.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return ""
    text = _UNCARRIABLE.sub("", str(value))
    return text[:limit] if limit is not None else text


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def never_sent(error: requests.RequestException) -> bool:
    """
    Whether ``error`` proves the request never reached the server: no
    connection (refused, no route, DNS, connect timeout, TLS handshake or proxy
    failure) or a request that could not be built. Anything else (a read
    timeout, a reset or close while the request was written or the answer
    read) leaves it open whether the server took the request.
    """
    if isinstance(error, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError,
                          requests.exceptions.ProxyError, requests.exceptions.InvalidURL,
                          requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema,
                          requests.exceptions.InvalidHeader, requests.exceptions.URLRequired)):
        return True
    if isinstance(error, requests.exceptions.ConnectionError) and not isinstance(error, requests.exceptions.Timeout):
        # requests wraps urllib3's MaxRetryError, whose reason says which step failed.
        reason = getattr(error.args[0], "reason", None) if error.args else None
        return isinstance(reason, urllib3.exceptions.NewConnectionError)
    return False


class SMSProvider:
    name = "base"
    #: The provider sends a long text as one concatenated message (and bills its segments).
    concatenates = True
    supports_group = False
    #: Webhook responses: (content type, body) the provider expects.
    webhook_reply: tuple[bytes, bytes] = (b"text/plain", b"")
    #: Each message carries the status URL the gateway gives it (so the URL can
    #: name the message); otherwise statuses go where the provider's console says.
    passes_status_callback = True

    def __init__(self, options: dict[str, Any], http_pool, reactor):
        self.options = options
        self.pool = http_pool
        self.reactor = reactor
        self.session = requests.Session()
        self.timeout = (5.0, options["http_timeout"])

    def close(self) -> None:
        self.session.close()

    def in_thread(self, fn: Callable, *args, **kwargs):
        return threads.deferToThreadPool(self.reactor, self.pool, fn, *args, **kwargs)

    # -- to implement -------------------------------------------------------

    def send(self, sms: OutboundSMS):
        """A Deferred firing with ProviderResult; TemporaryFailure / PermanentFailure otherwise."""
        raise NotImplementedError

    def parse_inbound(self, request: WebhookRequest, secret_for: Callable[[str], str | None]) -> InboundSMS:
        """Verify and parse an inbound-message webhook (raise WebhookRejected)."""
        raise NotImplementedError

    def parse_status(self, request: WebhookRequest, secret_for: Callable[[str], str | None]) -> StatusReport:
        raise NotImplementedError

    # -- shared HTTP handling -------------------------------------------------

    def request(self, method: str, url: str, **kwargs) -> requests.Response:
        """
        Runs in the HTTP thread pool. A network error that happened before the
        request could reach the provider is a TemporaryFailure (safe to retry);
        one after it went out means the provider may have acted on it, so a
        POST fails with SendUnconfirmed instead, never to be sent again blindly.
        """
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as e:
            if method.upper() == "POST" and not never_sent(e):
                raise SendUnconfirmed(f"no answer from {self.name} after the request was sent "
                                      f"({type(e).__name__})") from None
            raise TemporaryFailure(f"cannot reach {self.name}: {type(e).__name__}") from None

    def classify(self, response: requests.Response, detail: str) -> None:
        """Raise the failure an unsuccessful answer means; return for success."""
        code = response.status_code
        if 200 <= code < 300:
            return
        if code == 429 or code >= 500:
            raise TemporaryFailure(f"{self.name} answered {code}" + (f": {detail}" if detail else ""))
        if code in (401, 403):
            log.error("{provider} refused the gateway's credentials ({code}): {detail}", provider=self.name,
                      code=code, detail=detail)
            raise PermanentFailure(f"the SMS provider refused the gateway's credentials ({code})",
                                   "service-unavailable")
        raise PermanentFailure(f"{self.name} refused the message: {detail or code}", "not-acceptable")
