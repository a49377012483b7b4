"""
Telling a sender, once per conversation, that the network split or cut their
message (several SMS, each charged; several IRC lines). Adapters give the plain
words (SendResult.split_notice); here they are shown once per (user, contact),
unless the user turned them off (the core setting ``split_notices``).
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.logger import Logger

from gateway.model import Field, OutboundMessage, SendResult

log = Logger(namespace="gateway.bridge.notices")

SETTING = "split_notices"
#: Settings every gateway offers besides its adapter's (the ``settings`` command).
CORE_SETTINGS = [Field(SETTING, "Tell me when a message of mine is split into several SMS or IRC lines",
                       type="boolean", default=True)]
#: Conversations remembered as told (the oldest forgotten first): bounded memory.
REMEMBERED = 10_000


class SplitNotices:
    def __init__(self, bridge):
        self.bridge = bridge
        self._told: OrderedDict[tuple[str, str], None] = OrderedDict()

    def sent(self, message: OutboundMessage, result: SendResult) -> None:
        if not result.split_notice or not message.user:
            return
        key = (message.user, message.recipient)
        if key in self._told:
            return
        self._told[key] = None
        if len(self._told) > REMEMBERED:
            self._told.popitem(last=False)
        d = self.bridge.registration(message.user)
        d.addCallback(self._tell, message, result.split_notice)
        d.addErrback(lambda f: log.failure("split notice for {user} not sent", f, user=message.user))

    def _tell(self, registration, message: OutboundMessage, notice: str) -> None:
        if registration is not None and registration.settings.get(SETTING) is False:
            return
        output = self.bridge.output
        if not output.connected:
            return
        room = message.kind == "groupchat"
        text = (f"Your message was {notice}." if room else
                f"Your message to {message.recipient} was {notice}.")
        output.send_notice(message.user, message.resource, message.recipient,
                           f"{text} (Once per conversation; the gateway's settings turn this off.)", room)
