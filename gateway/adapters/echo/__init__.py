"""
The echo network: every contact answers each message with what it got.

It exists for tests, the demo and benchmarks, and as the worked example in
docs/adapters.md. It behaves like a real network in the ways that matter to
the core: a send takes ``delay`` seconds, contacts listed in ``unreachable``
fail temporarily (so the outbox retries them until its deadline) and contacts
in ``rejecting`` refuse for good.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from gateway.adapters.base import AdapterBase
from gateway.model import (Field, InboundMessage, OutboundMessage, PermanentFailure, Registration,
                           RegistrationError, SendResult, TemporaryFailure)
from gateway.options import Option, non_negative


class EchoAdapter(AdapterBase):
    name = "echo"
    gateway_type = "echo"
    display_name = "Echo gateway"
    features = frozenset({"receipts", "chatstates", "subject", "thread", "attachments"})
    instructions = "Choose a name on the echo network. Every contact echoes what you send it."
    address_prompt = "Any name: the contact will echo your messages"
    contact_presence = "available"
    # Echoes are scheduled in call order (equal delays fire in order), so order holds without waiting.
    pipelining = True
    options = [
        Option("delay", float, 0.0, check=non_negative,
               doc="Seconds each send takes before the echo comes back (a slow network)."),
        Option("unreachable", list, [], item_type=str,
               doc="Contacts that fail temporarily: messages to them are retried until the outbox deadline."),
        Option("rejecting", list, [], item_type=str,
               doc="Contacts that refuse every message (a permanent failure)."),
    ]
    registration_fields = [
        Field("username", "Name on the echo network", required=True),
        Field("password", "Password (optional; kept encrypted)", type="text-private"),
    ]
    settings_fields = [
        Field("prefix", "Text put before every echo", default=""),
        Field("echo_chat_states", "Echo chat states (typing notifications)", type="boolean", default=True),
    ]

    def validate_registration(self, jid: str, values: dict[str, Any], current: Registration | None):
        username = values.get("username", "").strip()
        if not username.replace("-", "").replace("_", "").replace(".", "").isalnum() or len(username) > 64:
            raise RegistrationError("the name may only hold letters, digits, '-', '_' and '.' (at most 64)")
        settings = {"prefix": "", "echo_chat_states": True}
        if current is not None:
            settings = {**settings, **current.settings}
        secrets = {"password": values["password"]} if values.get("password") else {}
        return username.lower(), settings, secrets

    def registration_values(self, registration: Registration) -> dict[str, Any]:
        return {"username": registration.foreign_id}

    def send(self, message: OutboundMessage, registration: Registration) -> defer.Deferred:
        recipient = message.recipient
        if recipient in self.config["rejecting"]:
            return defer.fail(PermanentFailure(f"{recipient} does not accept messages", "not-acceptable"))
        if recipient in self.config["unreachable"]:
            return defer.fail(TemporaryFailure(f"{recipient} cannot be reached right now"))
        if message.body is None and message.subject is None and not message.attachments:
            if message.chat_state and registration.settings.get("echo_chat_states", True):
                return self._echo(message, registration, chat_state_only=True)
            return defer.succeed(SendResult())
        if self.config["delay"]:
            return task.deferLater(self.context.clock, self.config["delay"], self._echo, message, registration)
        return self._echo(message, registration)

    def _echo(self, message: OutboundMessage, registration: Registration, chat_state_only: bool = False):
        if chat_state_only:
            reply = InboundMessage(component=message.component, user=message.user, sender=message.recipient,
                                   chat_state=message.chat_state)
        else:
            prefix = registration.settings.get("prefix") or ""
            body = None if message.body is None else prefix + message.body
            reply = InboundMessage(component=message.component, user=message.user, sender=message.recipient,
                                   body=body, subject=message.subject, thread=message.thread,
                                   attachments=list(message.attachments))
        # The echo network knows each message by its id, as a real network's
        # idempotency key: a resend after a crash between its echo and the
        # outbox's confirmation is recognised, and its echo not delivered twice.
        reply.dedupe_key = f"echo:{message.id}"
        d = self.context.deliver(reply)
        return d.addCallback(lambda _: SendResult(foreign_id=f"echo-{message.id}", delivered=True))
