"""
What the gateway remembers of the messages it relayed, per conversation, so
that a correction, a reply or a reaction can find the message it refers to:
who wrote it (the user, or a contact / nick), its text, and the network's own
reference to it (an IRC msgid, an email Message-ID). Both ways: an XMPP id
leads to the network's reference (outbound), a network reference to the XMPP
id the user's client knows (inbound).

Bounded: MESSAGES per conversation, CONVERSATIONS and TOTAL messages in all
(the least recently used conversation loses its oldest first), BODY_LIMIT
characters of each text and ids of at most ID_LIMIT: a few tens of MB at most,
whatever users and networks send. In memory only: after a restart, or for a message from longer
ago, a reference is not found and the message goes on without it (a correction
is then sent whole, a reply without its quote).

Here, too, the neutral fallback is applied for networks whose adapter does not
declare ICorrections, IReplies or IReactions (gateway.fallback), and a
correction of a message the user did not send is refused.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from gateway import fallback
from gateway.interfaces import ICorrections, IReactions, IReplies
from gateway.model import Field, GatewayError, InboundMessage, OutboundMessage, Registration, RoomEvent

MESSAGES = 200
CONVERSATIONS = 10_000
TOTAL = 100_000
#: Text kept per message (for quotes and short edits); a longer one is kept cut, and marked so.
BODY_LIMIT = 500
ID_LIMIT = 256

SETTING = "corrections"
CORE_SETTINGS = [Field(SETTING, "Corrections of my messages, on networks that have none", type="list-single",
                       options=("send", "ignore"), default="send",
                       desc="send: as a new message starting with “Correction:”; ignore: not sent at all")]


@dataclass
class Record:
    own: bool
    author: str | None = None
    body: str | None = None
    #: The network's reference to the message.
    ref: str | None = None
    #: Reactions the user already sent to it (so a new set adds only the new ones).
    reacted: set[str] = field(default_factory=set)
    #: ``body`` was cut to BODY_LIMIT: good for a quote, not for a short edit.
    cut: bool = False


class Conversations:
    def __init__(self, adapter):
        self.adapter = adapter
        self._by_id: OrderedDict[tuple[str, str], OrderedDict[str, Record]] = OrderedDict()
        self._by_ref: dict[tuple[str, str], dict[str, str]] = {}
        self._count = 0

    # -- memory ---------------------------------------------------------------

    def remember(self, user: str, contact: str, xmpp_id: str | None, record: Record) -> None:
        if not xmpp_id or len(xmpp_id) > ID_LIMIT or (record.ref and len(record.ref) > ID_LIMIT):
            return
        key = (user, contact)
        if record.body and len(record.body) > BODY_LIMIT:
            record.body, record.cut = record.body[:BODY_LIMIT], True
        messages = self._by_id.get(key)
        if messages is None:
            messages = self._by_id[key] = OrderedDict()
            self._by_ref[key] = {}
            while len(self._by_id) > CONVERSATIONS:
                old, gone = self._by_id.popitem(last=False)
                self._by_ref.pop(old, None)
                self._count -= len(gone)
        else:
            self._by_id.move_to_end(key)
        old = messages.get(xmpp_id)
        if old is None:
            self._count += 1
        elif old.ref and self._by_ref[key].get(old.ref) == xmpp_id:
            del self._by_ref[key][old.ref]            # a reused id: the old message's reference goes with it
        messages[xmpp_id] = record
        messages.move_to_end(xmpp_id)
        if record.ref:
            self._by_ref[key][record.ref] = xmpp_id
        while len(messages) > MESSAGES:
            self._drop_oldest(key)
        while self._count > TOTAL:
            self._drop_oldest(next(iter(self._by_id)))

    def _drop_oldest(self, key: tuple[str, str]) -> None:
        messages = self._by_id[key]
        gone_id, gone = messages.popitem(last=False)
        self._count -= 1
        refs = self._by_ref[key]
        if gone.ref and refs.get(gone.ref) == gone_id:   # a reused ref belongs to the newer message
            del refs[gone.ref]
        if not messages:
            del self._by_id[key]
            self._by_ref.pop(key, None)

    def find(self, user: str, contact: str, xmpp_id: str | None) -> Record | None:
        messages = self._by_id.get((user, contact))
        return messages.get(xmpp_id) if messages and xmpp_id else None

    def by_ref(self, user: str, contact: str, ref: str | None) -> tuple[str, Record] | None:
        """The XMPP id (and record) of the message the network calls ``ref``."""
        xmpp_id = self._by_ref.get((user, contact), {}).get(ref) if ref else None
        if xmpp_id is None:
            return None
        record = self.find(user, contact, xmpp_id)
        return (xmpp_id, record) if record is not None else None

    def learn(self, user: str, contact: str, xmpp_id: str, ref: str) -> None:
        """The network's reference to one of the user's messages, known now."""
        record = self.find(user, contact, xmpp_id)
        if record is not None and not record.ref and len(ref) <= ID_LIMIT:
            record.ref = ref
            self._by_ref[(user, contact)][ref] = xmpp_id

    # -- from the user ----------------------------------------------------------

    def prepare(self, message: OutboundMessage, registration: Registration | None) -> OutboundMessage | None:
        """
        Fill in what is known of the message referred to and apply the text
        fallback the network needs; remember the message. None: nothing is to
        be sent (a correction the user wants ignored, a reaction removed).
        Raises GatewayError (forbidden) for a correction of someone else's message.
        """
        user, contact = message.user, message.recipient
        adapter = self.adapter
        original_body = message.body
        if message.correction_of:
            record = self.find(user, contact, message.correction_of)
            if record is not None and not record.own:
                raise GatewayError("you can only correct your own messages", "forbidden", "cancel")
            if record is not None:
                message.ref, message.ref_body = record.ref, None if record.cut else record.body
                record.body, record.cut = message.body, False     # the next correction refers to this text
                if record.body and len(record.body) > BODY_LIMIT:
                    record.body, record.cut = record.body[:BODY_LIMIT], True
            if not ICorrections.providedBy(adapter):
                settings = registration.settings if registration is not None else {}
                if settings.get(SETTING, "send") == "ignore":
                    return None
                message.body = fallback.correction_text(message.body or "")
                if IReplies.providedBy(adapter) and message.ref:
                    message.reply_to = message.correction_of     # threaded under the original
            return message
        if message.reaction_to:
            record = self.find(user, contact, message.reaction_to)
            added = list(message.reactions)
            if record is not None:
                message.ref, message.ref_author, message.ref_body = record.ref, record.author, record.body
                added = [r for r in message.reactions if r not in record.reacted]
                record.reacted = set(message.reactions)
            message.reactions = added
            if not added:
                return None                        # a removal (or the same set again): nothing to say
            if not IReactions.providedBy(adapter):
                message.body = fallback.reaction_text(added, message.ref_body)
                if IReplies.providedBy(adapter) and message.ref:
                    message.reply_to = message.reaction_to
            return message
        if message.reply_to:
            record = self.find(user, contact, message.reply_to)
            if record is not None:
                message.ref, message.ref_author = record.ref, record.author or message.ref_author
                message.ref_body = record.body or message.ref_body
            if not IReplies.providedBy(adapter):
                message.body = fallback.reply_text(message.body or "", message.ref_body)
        self.remember(user, contact, message.xmpp_id, Record(own=True, body=original_body))
        return message

    def sent(self, message: OutboundMessage, foreign_id: str | None) -> None:
        """The network took an ordinary message: its reference is now known."""
        if foreign_id and message.xmpp_id and not (message.correction_of or message.reaction_to):
            self.learn(message.user, message.recipient, message.xmpp_id, foreign_id)

    # -- from the network ---------------------------------------------------------

    def inbound(self, message: InboundMessage) -> None:
        """Resolve what the message refers to, and remember it."""
        self._resolve(message, message.user, message.sender)
        self.remember(message.user, message.sender, message.id,
                      Record(own=False, author=message.sender, body=message.body, ref=message.foreign_id))

    def resolve_room_event(self, event: RoomEvent) -> None:
        """
        What a room line refers to, resolved before the archive sees it: a reaction
        to a message not known becomes a line in words here, and must be archived
        under the stanza-id it is sent with (room_event resolving again is a no-op).
        """
        if event.kind == "message" and not event.message_id:
            self._resolve(event, event.user, event.room)

    def room_event(self, event: RoomEvent) -> None:
        if event.kind != "message":
            return
        if event.message_id:
            # The user's own message reflected (remembered when sent): the room says under which nick.
            record = self.find(event.user, event.room, event.message_id)
            if record is not None and record.own and record.author is None:
                record.author = event.nick
            return
        self._resolve(event, event.user, event.room)
        if event.stanza_id and event.body is not None:
            self.remember(event.user, event.room, event.stanza_id,
                          Record(own=False, author=event.nick, body=event.body, ref=event.foreign_id))

    def _resolve(self, message, user: str, contact: str) -> None:
        if not message.ref:
            return
        found = self.by_ref(user, contact, message.ref)
        if found is None:
            if message.reactions and message.body is None:
                # A reaction to a message the gateway does not know (the user's own on IRC, which the
                # server does not echo; or one from long ago): said in words rather than lost.
                message.body = fallback.reaction_text(message.reactions, None)
                message.reactions = []
            return
        xmpp_id, record = found
        if message.reactions:
            message.reaction_to = xmpp_id
        else:
            message.reply_to = xmpp_id
        message.ref_author = record.author


__all__ = ["Conversations", "Record", "CORE_SETTINGS", "SETTING"]
