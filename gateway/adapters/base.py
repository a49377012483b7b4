"""A base class with the defaults most adapters want (see docs/adapters.md)."""

from __future__ import annotations

import datetime
from typing import Any

from twisted.application import service
from twisted.internet import defer
from zope.interface import implementer

from gateway.interfaces import IAdapter
from gateway.model import AddressError, Field, PermanentFailure, Registration, RegistrationError


def utc_day() -> str:
    """The period of daily caps (counters table): the UTC date."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


@defer.inlineCallbacks
def check_daily_limit(context, jid: str, name: str, limit: int, what: str = "messages"):
    """
    Refuse (policy-violation, permanent) a send over a user's daily cap, so
    one account cannot spam through the operator's provider or smarthost.
    The caller counts the send with ``context.add_to_counter(jid, name, utc_day())``
    once it went out. 0: no limit.
    """
    if not limit:
        return
    used = yield context.counter(jid, name, utc_day())
    if used >= limit:
        raise PermanentFailure(f"daily limit of {limit} {what} reached; it resets at 00:00 UTC", "policy-violation")


@implementer(IAdapter)
class AdapterBase(service.Service):
    name = "base"
    gateway_type = "xmpp"
    display_name = "Gateway"
    features: frozenset[str] = frozenset()
    options: list = []
    registration_fields: list[Field] = []
    settings_fields: list[Field] = []
    instructions = "Fill in the form to register."
    address_prompt = "Address"
    contact_presence: str | None = None
    #: True when send() calls reach the network in the order they are made (one
    #: socket, one ordered queue): the outbox then starts the next message of a
    #: conversation without waiting for the previous one to finish. False (the
    #: safe default, e.g. for concurrent HTTP requests) keeps one message of a
    #: conversation in flight at a time.
    pipelining = False
    #: Users need not register (XEP-0077) before using the network: a bare
    #: registration is created on first use (IRC, like biboumi).
    auto_register = False
    #: Longest address accepted by normalize_address.
    max_address_length = 256

    def __init__(self, options: dict[str, Any], context):
        self.config = options
        self.context = context

    def normalize_address(self, text: str) -> str:
        text = (text or "").strip()
        if not text:
            raise AddressError("the address is empty")
        if len(text) > self.max_address_length:
            raise AddressError(f"the address is longer than {self.max_address_length} characters")
        if any(ord(c) < 32 for c in text):
            raise AddressError("the address contains control characters")
        return text

    def validate_registration(self, jid: str, values: dict[str, Any], current: Registration | None):
        settings = {f.var: values.get(f.var, f.default) for f in self.registration_fields if not f.secret}
        secrets = {f.var: values[f.var] for f in self.registration_fields if f.secret and values.get(f.var)}
        return None, settings, secrets

    def jid_localpart(self, address: str) -> str:
        """The address as users see it in JIDs (before XEP-0106 escaping); the same by default."""
        return address

    def registration_values(self, registration: Registration) -> dict[str, Any]:
        """The current values of the registration form's fields (secrets are never shown)."""
        return dict(registration.settings)

    def validate_settings(self, registration: Registration, values: dict[str, Any]) -> dict[str, Any]:
        allowed = {f.var for f in self.settings_fields}
        unknown = set(values) - allowed
        if unknown:
            raise RegistrationError("unknown setting(s): " + ", ".join(sorted(unknown)))
        return values

    def send(self, message, registration):
        raise NotImplementedError

    def user_registered(self, registration: Registration) -> None:
        pass

    def user_unregistered(self, registration: Registration) -> None:
        pass
