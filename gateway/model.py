"""
The neutral model: what the bridge, the XMPP side and the adapters say to each other.

Nothing here knows XML or any foreign protocol. Addresses are plain strings:
``user`` is always an XMPP bare JID, ``recipient``/``sender`` always a foreign
address exactly as the adapter spells it (an E.164 number, an email address,
``#chan%server``). Turning those into JIDs is the XMPP side's job (XEP-0106).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.ids import new_id


_FIELDS: dict[type, tuple[tuple[str, Any, bool], ...]] = {}
_NO_DEFAULT = object()


def _fields(cls) -> tuple[tuple[str, Any, bool], ...]:
    """
    Per field: its name, the value it has when nobody set it (left out of
    stored payloads, put back by _from_dict) and whether it holds a list.
    """
    found = _FIELDS.get(cls)
    if found is None:
        rows = []
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory in (list, dict):
                default = f.default_factory()
            else:
                default = _NO_DEFAULT
            rows.append((f.name, default, f.default_factory is list))
        found = _FIELDS[cls] = tuple(rows)
    return found


def _to_dict(obj) -> dict[str, Any]:
    """
    Shallow and fast (dataclasses.asdict deep-copies): messages hold only
    scalars and lists of str. Fields still at their default are left out, so
    a stored message is small to encode and to write; _from_dict restores them.
    """
    values = obj.__dict__
    out = {}
    for name, default, is_list in _fields(type(obj)):
        value = values[name]
        if value is default or value == default:
            continue
        out[name] = list(value) if is_list else value
    return out


def _from_dict(cls, data: dict[str, Any]):
    """Tolerates keys written by other versions: unknown ones are ignored, missing ones defaulted."""
    names = cls.__dataclass_fields__
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class OutboundMessage:
    """A message from an XMPP user to a foreign address, as stored in the outbox."""

    component: str
    user: str
    recipient: str
    body: str | None = None
    subject: str | None = None
    thread: str | None = None
    attachments: list[str] = field(default_factory=list)
    xmpp_id: str | None = None
    #: The sender's own stable id for the message (XEP-0359 origin-id), if it gave one.
    origin_id: str | None = None
    resource: str | None = None
    receipt_requested: bool = False
    chat_state: str | None = None
    #: XEP-0308: the XMPP id of the user's earlier message that ``body`` corrects.
    correction_of: str | None = None
    #: XEP-0461: the XMPP id of the message this one answers (``body`` without the quoted fallback).
    reply_to: str | None = None
    #: XEP-0444: the XMPP id of the message reacted to; ``reactions`` are the ones this message adds
    #: (the bridge keeps what was reacted before: a removal adds none and sends nothing).
    reaction_to: str | None = None
    reactions: list[str] = field(default_factory=list)
    #: What the gateway remembers of the message referred to (by correction_of, reply_to or
    #: reaction_to), filled in by the bridge: the network's reference to it (an IRC msgid, an email
    #: Message-ID), who wrote it (a nick, an address) and its text.
    ref: str | None = None
    ref_author: str | None = None
    ref_body: str | None = None
    #: XEP-0033 group message: every recipient (``recipient`` then names the group).
    group: list[str] = field(default_factory=list)
    #: "chat", or "groupchat" for a message to a room (``recipient`` is the room's address).
    kind: str = "chat"
    #: Stable across retries and restarts: adapters whose network has
    #: idempotency keys (or Message-IDs) should use it, so a resend after a
    #: crash is recognisably the same message.
    id: str = field(default_factory=new_id)
    created_at: float = field(default_factory=time.time)
    #: An adapter's record of what part of a multi-part send its network
    #: already accepted, kept durable with IAdapterContext.checkpoint so a
    #: retry resumes instead of resending those parts.
    progress: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OutboundMessage":
        return _from_dict(cls, data)


@dataclass
class InboundMessage:
    """A message from a foreign address to an XMPP user."""

    component: str
    user: str
    sender: str
    body: str | None = None
    subject: str | None = None
    thread: str | None = None
    attachments: list[str] = field(default_factory=list)
    foreign_id: str | None = None
    #: ``chat`` for one-to-one, ``groupchat`` for rooms, ``normal`` for mail-like.
    type: str = "chat"
    #: For group chats: the occupant nickname the message is from.
    nick: str | None = None
    #: The foreign network's own timestamp (seconds since the epoch), if older than now.
    timestamp: float | None = None
    chat_state: str | None = None
    #: The network's reference to an earlier message this one answers (``reactions`` empty) or
    #: reacts to (``reactions`` set): an IRC msgid, an email Message-ID. The bridge turns it into
    #: ``reply_to`` / ``reaction_to``, the XMPP id of that message, when it remembers it.
    ref: str | None = None
    reactions: list[str] = field(default_factory=list)
    reply_to: str | None = None
    reaction_to: str | None = None
    #: Who wrote the message referred to, as a foreign address (set by the bridge with reply_to).
    ref_author: str | None = None
    id: str = field(default_factory=new_id)
    #: The network's own id for this message when it may hand the same message
    #: over again (a provider retrying a webhook): a repeat within the
    #: retention window is acknowledged but not delivered twice.
    dedupe_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InboundMessage":
        return _from_dict(cls, data)


@dataclass(frozen=True)
class Occupancy:
    """A user's resources in one room, under one nick: who must hear that the room is going away."""

    user: str
    resources: tuple[str, ...]
    room: str
    nick: str


@dataclass(slots=True)
class RoomEvent:
    """
    Something that happened in a group chat (XEP-0045 on the XMPP side), for the
    resources of one user that joined it. Room events are not queued: they are
    about now, and a room replayed hours later would mislead.

    Slotted: a reconnect storm queues one per occupant per rejoining user, and
    an instance dict made each cost about three times as much (tests/unit/test_room_queue_memory.py).
    """

    component: str
    user: str
    resources: list[str]
    #: The foreign room address, e.g. "#chan%irc.example.org".
    room: str
    #: "presence" (an occupant, or the user), "message", "subject", "join-error", or "invite" (someone
    #: on the network invites the user into the room: ``actor`` who, ``reason`` why; ``resources``
    #: ``[""]`` for the user's bare JID).
    kind: str
    nick: str | None = None
    unavailable: bool = False
    role: str = "participant"
    affiliation: str = "none"
    #: The presence is the user's own (the XMPP side marks it so).
    own: bool = False
    #: The user's own presence that completes a join: the room is now in their view.
    joined: bool = False
    #: The network gave the user another nick than the one asked for.
    nick_assigned: bool = False
    #: The occupant was removed by someone (``actor``), not by leaving.
    kicked: bool = False
    #: The user is removed because the gateway is stopping (the room is gone with it).
    service_stopping: bool = False
    #: Who did it (a kick, a mode change), when the network says.
    actor: str | None = None
    #: Set on the unavailable presence of an occupant changing nick: their new one.
    new_nick: str | None = None
    reason: str | None = None
    body: str | None = None
    subject: str | None = None
    timestamp: float | None = None
    #: The network's id for a message (XEP-0359 stanza-id).
    stanza_id: str | None = None
    #: The XMPP id of the user's own message when the room reflects it back.
    message_id: str | None = None
    #: The user's own id for that message (XEP-0359 origin-id), kept on the reflection.
    origin_id: str | None = None
    #: The network's own id of a message (an IRC msgid), when it has one (``stanza_id`` is then the same
    #: or one the gateway made up, so that clients can refer to the message).
    foreign_id: str | None = None
    #: A typing notification in the room (XEP-0085 state name), for a message without a body.
    chat_state: str | None = None
    #: The user's own correction reflected: the XMPP id of the message it corrects.
    correction_of: str | None = None
    #: As in InboundMessage: the network's reference to the message answered or reacted to, the
    #: reactions, and the stanza ids the bridge found for it (with the nick who wrote it).
    ref: str | None = None
    reactions: list[str] = field(default_factory=list)
    reply_to: str | None = None
    reaction_to: str | None = None
    ref_author: str | None = None
    condition: str | None = None
    #: Where the occupant is connected from, as the network shows everyone (IRC: the user and host
    #: of ``nick!user@host``), when known; checked by the adapter, bounded, no spaces.
    occupant_user: str | None = None
    occupant_host: str | None = None
    #: A message from the room's archive (history on join), not one said now.
    archived: bool = False


@dataclass(frozen=True)
class HistoryRequest:
    """
    How much of a room's archive a joining client wants (XEP-0045 ``<history/>``):
    every limit that is set applies; none set means the room's default length.
    """

    maxstanzas: int | None = None
    #: The characters of the stanzas the history becomes, all together.
    maxchars: int | None = None
    seconds: float | None = None
    #: Epoch seconds.
    since: float | None = None


@dataclass(frozen=True)
class ConnectionInfo:
    """One of a user's connections to a foreign server, as the user may see it."""

    address: str
    host: str
    port: int
    tls: bool
    nick: str
    connected: bool
    #: When it signed on (epoch seconds), None while not connected.
    since: float | None = None


@dataclass
class SendResult:
    """What an adapter says after handing a message to its network."""

    #: The network's id for the message, used to match later delivery reports.
    foreign_id: str | None = None
    #: True when the network confirmed delivery to the recipient already.
    delivered: bool = False
    #: How many network messages were used (SMS segments, IRC lines).
    parts: int = 1
    #: The network took the message without confirming it (its answer was
    #: lost): if no DeliveryReport, or IAdapterContext.confirmed, comes within
    #: this many seconds, the sender is told it could not be confirmed.
    confirm_within: float | None = None
    #: Plain words for the sender when the network split or cut the message
    #: ("sent as 3 SMS: ..."); the gateway tells them once per conversation.
    split_notice: str | None = None


@dataclass
class DeliveryReport:
    """An asynchronous verdict on a message sent earlier (SMS status callbacks, DSNs)."""

    component: str
    user: str
    foreign_id: str
    delivered: bool
    condition: str | None = None
    text: str | None = None


@dataclass
class Registration:
    """One user's registration with one component."""

    component: str
    jid: str
    foreign_id: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    #: Decrypted in memory only; stored encrypted with the registry key.
    secrets: dict[str, str] = field(default_factory=dict)
    #: Whether the user still accepts our presence (XEP-0100: after an
    #: unsubscribe the gateway sends nothing more).
    subscribed: bool = True
    created_at: float = field(default_factory=time.time)
    #: The stored secrets exist but no configured key opens them (``secrets``
    #: is then empty): nothing that needs them may act for this user.
    secrets_unreadable: bool = False


@dataclass(frozen=True)
class Field:
    """A field an adapter asks for (XEP-0004 field types), at registration or in settings."""

    var: str
    label: str
    type: str = "text-single"
    required: bool = False
    default: Any = None
    options: tuple[str, ...] = ()
    desc: str = ""

    @property
    def secret(self) -> bool:
        return self.type == "text-private"


class GatewayError(Exception):
    """An error with an XMPP stanza error condition and human-readable text."""

    condition = "undefined-condition"
    error_type = "cancel"

    def __init__(self, text: str = "", condition: str | None = None, error_type: str | None = None):
        super().__init__(text)
        self.text = text
        if condition:
            self.condition = condition
        if error_type:
            self.error_type = error_type


class TemporaryFailure(GatewayError):
    """The network may accept the message later: the outbox retries until its deadline."""

    condition = "remote-server-timeout"
    error_type = "wait"


class LostOwnership(TemporaryFailure):
    """Another process took the message over: this one must not send it."""


class PermanentFailure(GatewayError):
    """The network refused the message for good: the sender gets this error at once."""

    condition = "recipient-unavailable"


class SecretsUndecryptable(GatewayError):
    """The user's stored credentials cannot be decrypted by this gateway (wrong or missing key)."""

    condition = "internal-server-error"

    def __init__(self, text: str = ("your stored credentials cannot be decrypted by this gateway; "
                                    "ask the operator or register again"), *args):
        super().__init__(text, *args)


class RegistrationError(GatewayError):
    condition = "not-acceptable"
    error_type = "modify"


class AddressError(GatewayError):
    """A foreign address the adapter cannot use."""

    condition = "jid-malformed"
    error_type = "modify"


class PolicyViolation(GatewayError):
    condition = "policy-violation"
    error_type = "modify"
