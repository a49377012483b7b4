"""SMS providers behind one interface; the adapter picks one by ``provider`` in config."""

from gateway.adapters.sms.providers.base import (InboundSMS, OutboundSMS, ProviderResult, SendUnconfirmed,
                                                 SMSProvider, StatusReport, WebhookRejected, WebhookRequest)
from gateway.adapters.sms.providers.generic import GenericJSONProvider
from gateway.adapters.sms.providers.telnyx import TelnyxProvider
from gateway.adapters.sms.providers.twilio import TwilioProvider

PROVIDERS: dict[str, type[SMSProvider]] = {p.name: p for p in (TwilioProvider, TelnyxProvider, GenericJSONProvider)}

__all__ = ["PROVIDERS", "SMSProvider", "InboundSMS", "OutboundSMS", "ProviderResult", "SendUnconfirmed",
           "StatusReport", "WebhookRejected", "WebhookRequest"]
