"""
The zope.interface contracts between the layers.

``IAdapter`` is what a network package implements; ``IAdapterContext`` is what
the bridge hands it. ``IRegistry`` is the storage the bridge and the XMPP side
use; ``IStanzaOutput`` is how the bridge reaches the XMPP side without
importing it (the XMPP side sits above the bridge).
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IAdapter(Interface):
    """
    One foreign network behind one component domain.

    Adapters are constructed as ``Adapter(options, context)`` where ``options``
    is the validated ``[components.options]`` table and ``context`` provides
    ``IAdapterContext``. An adapter is also a ``twisted.application.service.IService``:
    it is started after the registry is open and stopped before it closes.
    """

    name = Attribute("Entry point name, e.g. 'echo'.")
    gateway_type = Attribute("XEP-0030 gateway identity type: 'sms', 'smtp', 'irc', ...")
    display_name = Attribute("Human name of the service, shown in disco and forms.")
    features = Attribute(
        "frozenset of what the network carries: 'receipts', 'chatstates', 'subject', "
        "'thread', 'attachments', 'group' (XEP-0033 multi-recipient messages)."
    )
    options = Attribute("list of gateway.options.Option: the adapter's config keys.")
    registration_fields = Attribute("list of gateway.model.Field for XEP-0077.")
    settings_fields = Attribute("list of gateway.model.Field a user may change later (XEP-0050).")
    instructions = Attribute("Registration instructions shown to the user.")
    address_prompt = Attribute("jabber:iq:gateway prompt: what kind of address to type.")
    contact_presence = Attribute("'available' to show every contact online, or None.")

    def normalize_address(text):
        """Canonical foreign address for ``text`` typed by a user; raise AddressError."""

    def validate_registration(jid, values, current):
        """
        Check a registration form and return (or fire a Deferred with)
        ``(foreign_id, settings, secrets)``. ``current`` is the existing
        Registration when the user changes one. Raise RegistrationError.
        """

    def registration_values(registration):
        """The current values of the registration form's fields, to show a registered user."""

    def validate_settings(registration, values):
        """Return the new settings dict for a settings change; raise RegistrationError."""

    def send(message, registration):
        """Hand an OutboundMessage to the network; a Deferred firing with SendResult.

        Fail with TemporaryFailure to be retried, PermanentFailure to give up."""

    def user_registered(registration):
        """A user registered or changed a registration (may return a Deferred)."""

    def user_unregistered(registration):
        """A user left: drop any per-user state and connections."""

    pipelining = Attribute(
        "True when send() calls reach the network in the order they are made (one socket, one ordered "
        "queue): the outbox then starts the next message of a conversation without waiting for the "
        "previous one. False keeps one message of a conversation in flight at a time.")
    auto_register = Attribute(
        "True when users need not register (XEP-0077) first: a bare registration is made on first use.")

    def jid_localpart(address):
        """The address as users see it in JIDs, before XEP-0106 escaping (often the address itself)."""


class IGroupChat(Interface):
    """
    A network with group chats. The XMPP side gives it XEP-0045 (joins, room
    messages, private messages to occupants, disco of rooms); what happens in a
    room comes back as neutral RoomEvents through IAdapterContext.room_event.
    """

    room_identity_type = Attribute(
        "The disco 'conference' identity type of its rooms: 'irc' for IRC channels, else 'text'.")
    occupants_visible = Attribute(
        "True when every occupant can see who the others really are (IRC: nick!user@host), so rooms "
        "are announced as non-anonymous.")

    def is_room(address):
        """Whether a normalized address names a room, by its shape."""

    def occupant_address(room, nick):
        """The foreign address to write to an occupant privately."""

    def room_name(room):
        """A room's name as people say it ("#chan on irc.example.org"), for disco."""

    def join(registration, resource, room, nick, password):
        """A Deferred firing once the join was sent; occupants, the user's own presence and the
        subject follow as RoomEvents."""

    def leave(user, resource, room):
        """A Deferred firing once the part was sent."""

    def joined_nick(user, resource, room):
        """The nick the user's resource is in (or joining) the room under now, or None.
        Clients ask after a gateway restart (XEP-0410 self-ping) whether they are still in."""


class IModeration(IGroupChat):
    """
    A group-chat network where occupants with the rights may remove others,
    give or take their voice and operator rights, ban them, and invite people
    (IRC channel operators). The XMPP side offers it as XEP-0045 room
    administration (muc#admin) and mediated invitations; roles and
    affiliations are the neutral model's words ("none", "visitor",
    "participant", "moderator"; "outcast", "none"), as in RoomEvent.

    Each method returns a Deferred that fires once the network confirmed the
    change (the occupant's new state then also comes as RoomEvents), or fails
    with a GatewayError whose condition says why (forbidden: no rights;
    item-not-found: nobody by that name; remote-server-timeout: no answer).
    """

    def set_role(registration, room, nick, role, reason):
        """Make occupant ``nick`` of ``room`` a ``role`` ("none" removes them, with ``reason`` or None)."""

    def set_affiliation(registration, room, nick, affiliation, reason):
        """Give ``nick`` an ``affiliation`` in ``room``: "outcast" bans (and removes) them, "none" lifts that."""

    def invite(registration, room, address, reason):
        """Invite the person at foreign ``address`` (see occupant_address) into ``room``."""

    def occupant_nick(room, address):
        """The nick in ``room`` of the person at foreign ``address`` (their occupant_address), or None
        when ``address`` names nobody who could be in that room."""
class IRoomArchive(Interface):
    """
    A group-chat network whose users set how much of a room's archive they get
    when they join (IRC: the channel's ``max_history`` setting). The archive
    itself is the gateway's (every IGroupChat room's messages are kept per user,
    for XEP-0313 and history on join); this only lets the adapter say the
    user's own default.
    """

    def history_length(registration, room):
        """How many archived messages a join sends when the client does not say: an int, or None
        for the gateway's default (``[limits] room_history``)."""


class IRoomDirectory(Interface):
    """A group-chat network whose servers list their rooms (disco#items of a server's JID)."""

    def is_server(address):
        """Whether a normalized address names a server (which lists rooms and has settings)."""

    def list_rooms(registration, server):
        """A Deferred firing with [(room address, readable name)]."""


class IAddressSettings(Interface):
    """
    A network with settings per foreign address (an IRC server's nick, password
    and SASL account), offered as the XEP-0050 'configure' command on that
    address's JID.
    """

    def address_fields(address):
        """The gateway.model.Field list for ``address``; empty when it has no settings."""

    def address_values(registration, address):
        """The current values of those fields."""

    def update_address(registration, address, values):
        """Merge new values: return (or fire a Deferred with) the new (settings, secrets)."""


class IConnectionStatus(Interface):
    """
    A network where some addresses are the user's connections (an IRC server):
    their contact JIDs show whether the user is connected there, as presence,
    to users who subscribe to them. Changes are told through
    IAdapterContext.contact_status.
    """

    def connection_status(user, address):
        """(connected, readable status) of the user's connection to ``address``, or None if it is no connection."""


class IConnections(Interface):
    """
    A network that keeps connections per user and server (IRC): users can see
    and close theirs, admins anyone's (biboumi's ad-hoc commands).
    """

    def is_server(address):
        """Whether a normalized address names a server one connects to."""

    def connections(user):
        """The user's connections now: a list of gateway.model.ConnectionInfo."""

    def users_connected():
        """The users with at least one connection now."""

    def disconnect(user, address, reason):
        """Close the user's connection to ``address`` (every one of theirs when None); returns how many."""


class IRawCommands(Interface):
    """
    A network whose servers take commands typed by the user (IRC): a message to
    such an address is a list of commands, not a message to someone. What the
    server answers comes back from that address as ordinary inbound messages.
    """

    def takes_commands(address):
        """Whether messages to a normalized address are commands for it."""

    def raw_command(registration, address, body):
        """Send the commands in ``body``; a Deferred firing once they are queued.
        Fails with a GatewayError saying what was wrong with them."""


class IWebHooks(Interface):
    """A network that is told things by HTTP (SMS providers' webhooks), mounted under /hooks/<component>/."""

    def web_resources():
        """{name: twisted.web.resource.IResource}; a resource's ``max_body`` caps its request bodies."""


class IHostsRooms(Interface):
    """
    An adapter whose users sit in group chats it hosts (IRC channels). At an
    orderly stop the XMPP side tells every occupant it was removed because the
    service is going away, so clients do not keep rooms that are gone.
    """

    def occupancy():
        """Iterable of gateway.model.Occupancy: every room a user's resources are in (or joining) now."""


class IContactNames(Interface):
    """
    A network whose addresses read better with a name than as they are (an IRC
    nick on its server): the name contacts get in users' rosters.
    """

    def contact_name(address):
        """A short readable name for a normalized contact address."""


class IHealthReport(Interface):
    """
    An adapter that can be half-broken while its component stream is fine (a
    listener that could not bind): /healthz must not stay green then.
    """

    def problems():
        """List of readable problems (empty when healthy), e.g. "SMTP listener tcp:25: permission denied"."""


class ICorrections(Interface):
    """
    A network that carries corrections itself: send() gets messages with
    ``correction_of`` set (and ``ref``/``ref_body`` of the original when the
    gateway remembers it) and shows them as corrections. Without it, the bridge
    sends a correction as a new message saying so, or nothing, as the user's
    ``corrections`` setting says.
    """


class IReplies(Interface):
    """
    A network that links replies to the message they answer: send() gets
    ``reply_to`` with ``ref`` (the network's reference to that message),
    ``ref_author`` and ``ref_body`` when known. Without it, the bridge puts a
    quoted first line before the reply.
    """


class IReactions(Interface):
    """
    A network with reactions: send() gets messages with ``reaction_to`` and the
    ``reactions`` they add (no body). Without it, the bridge sends
    ``Reacted ❤ to “…”``.
    """


class ITyping(Interface):
    """A network with typing notifications (XEP-0085 chat states)."""

    def typing(message, registration):
        """Pass on ``message.chat_state`` (composing, paused, active, inactive, gone) now; not queued,
        may return a Deferred. Networks where the connection cannot carry it do nothing."""


#: ``ISendNow.send_now``'s answer when only ``send`` (the Deferred) can tell.
NOT_NOW = object()


class ISendNow(Interface):
    """
    A network that can often take a room message at once (a connection up):
    the bridge then sends it without a Deferred chain, the hot path of group
    chats (issue 12). Otherwise, and with the same outcome, ``send``.
    """

    def send_now(message, registration):
        """What ``send(message, registration)`` would fire with, when that is known at once: its result,
        or raise the exception it would fail with. ``NOT_NOW``, having done nothing, when only ``send`` can
        tell (no connection yet, a kind of message without a fast path): the bridge then calls ``send``."""


class IAdapterContext(Interface):
    """What the bridge offers an adapter."""

    component = Attribute("The component domain the adapter serves.")
    clock = Attribute("IReactorTime to schedule with (the reactor in production).")
    files = Attribute("gateway.web.files.FileStore: put(data, name, type) -> Deferred[URL] for links.")
    token_key = Attribute("bytes: a key for the adapter's keyed hashes (stable per-user tokens), derived from the "
                          "registry's secret_key; empty in tests that give none.")

    def deliver(message):
        """
        Queue an InboundMessage durably; the Deferred fires once it is stored.
        With ``message.dedupe_key`` set (the network's own id), a repeat is
        acknowledged the same way but not delivered twice.
        """

    def deliver_all(messages, threads=()):
        """
        Queue several InboundMessages in one transaction: all stored, or (on
        failure) none. Messages whose ``dedupe_key`` was accepted before are
        acknowledged but left out. ``threads``: (jid, thread, message_id,
        subject) records as add_to_thread takes them, written in the same
        transaction, so a message and its thread record are on disk together
        or not at all (and cost one commit).
        """

    def checkpoint(message):
        """
        Make ``message.progress`` durable while sending it (the parts a network
        already accepted), so a retry after a failure or a crash resumes there.
        Fails with LostOwnership when another process took the message over:
        the adapter must then stop sending it.
        """

    def room_event(event):
        """Pass a RoomEvent to the user's joined resources now (not queued)."""

    def room_backlog():
        """
        How many room events wait toward XMPP now (in the paced output queue, or
        held while the component stream is down): an adapter holds back work that
        makes more of them (an IRC reconnect storm) while this is high.
        """

    def contact_status(user, address, available, status):
        """A contact's presence changed (a connection up or down): shown to the user now, not queued."""

    def message_ref(user, address, xmpp_id, ref):
        """The network's reference to a message the user sent, learnt after the send (an IRC msgid from the
        server's echo): replies and reactions from the network to it can then be linked to it."""

    def typing(user, address, state):
        """A contact is typing (an XEP-0085 state name): shown to the user now if the stream is up, never
        queued (a typing notification delivered later would mislead)."""

    def report(report):
        """A DeliveryReport for an earlier message (receipts, late failures)."""

    def confirmed(foreign_id):
        """
        The network said it has a message sent earlier (an SMS provider's
        'queued' or 'sent' status) without a final verdict yet: a message sent
        with SendResult.confirm_within is then no longer reported as unconfirmed.
        """

    def registration(jid):
        """Deferred firing with the Registration of ``jid``, or None."""

    def registration_by_foreign_id(foreign_id):
        """Deferred firing with the Registration owning ``foreign_id``, or None."""

    def counter(jid, name, period):
        """Deferred firing with a per-user counter's value in ``period`` (e.g. a date), 0 if unset."""

    def add_to_counter(jid, name, period, amount=1):
        """Atomically add to a per-user counter; the Deferred fires with the new value."""

    def add_to_thread(jid, thread, message_id, subject=None):
        """Record that a network message id belongs to an XMPP thread (for networks threading by ids)."""

    def thread_messages(jid, thread):
        """Deferred firing with [(message_id, subject)] of a thread, oldest first."""

    def thread_of(jid, message_ids):
        """Deferred firing with the thread any of ``message_ids`` belongs to, or None."""

    def offer_file(user, data, name, content_type):
        """
        Make a file from the network (an email attachment, MMS media) reachable
        by ``user``: a Deferred firing with its URL, on the user's own server
        (XEP-0363) when it offers an upload service, else at the gateway's
        ``/files/``. Fires once the file is durably stored either way.
        """

    def rehost(user, url):
        """
        A Deferred firing with a URL for a file the network offers by URL (MMS
        media): the same file on the user's own server (XEP-0363) when it has
        an upload service and the file could be fetched, else ``url`` itself.
        """

    def fetch(url, user=None, max_size=None):
        """
        The file at a URL ``user`` sent (gateway.web.fetch.Fetched: data,
        content type, name), size- (the operator's cap, or ``max_size`` when
        smaller) and time-capped and never from a private
        address unless the operator allows it or it is the upload service of
        the user's own server; fails with a GatewayError the sender can read
        (not-allowed, policy-violation, item-not-found).
        """


class IStanzaOutput(Interface):
    """How the bridge reaches the XMPP users of one component."""

    connected = Attribute("True while the component stream is authenticated.")
    holds_room_events = Attribute(
        "True when send_room_event queues room events itself while the stream is down (a paced, merging "
        "queue, gateway/xmpp/pacing.py) and writes them once it is back; the bridge then holds none.")

    def send_message(message):
        """Send an InboundMessage to its user now."""

    def send_error(message, error):
        """Tell the sender of an OutboundMessage that it failed (a GatewayError)."""

    def send_receipt(user, resource, contact, xmpp_id):
        """Send an XEP-0184 receipt for ``xmpp_id`` from ``contact`` to ``user``."""

    def send_notice(user, resource, about, text, room):
        """The gateway's own words about ``about`` (a contact or room): from the room's JID in the room, else a
        chat message from the gateway's JID."""

    def send_presence(user, contact, available, status):
        """Presence of a contact's JID (available or not, with a status text) to the user's bare JID."""

    def send_room_event(event):
        """Send a RoomEvent (XEP-0045 presence, message, subject, join error) to the resources it names."""

    def room_event_size(event):
        """The characters of the stanza a message RoomEvent becomes for one resource (XEP-0045 maxchars)."""

    def flush_room_events():
        """Write every room event still waiting for the pacing budget now (at shutdown); how many."""

    def room_backlog():
        """Room events queued in this output and not yet written (0 for an output that queues none)."""

    def barrier():
        """
        A Deferred firing once the XMPP server has read everything sent before
        it (an answered XEP-0199 ping); it fails if the stream ends first.
        """


class IRegistry(Interface):
    """
    Durable state; every method but close returns a Deferred. gateway.registry.sql
    implements it on SQLite and PostgreSQL; the shared suite in tests/unit/test_registry.py
    is what another implementation must pass.
    """

    shared = Attribute("True when several processes may use the registry at once (PostgreSQL).")

    def open():
        """Connect and apply schema migrations."""

    def close():
        """Release connections."""

    def ping():
        """Fires with True when the database answers (for /healthz)."""

    def get_registration(component, jid):
        """The Registration, or None."""

    def registration_by_foreign_id(component, foreign_id):
        """The Registration owning a foreign identity, or None."""

    def list_registrations(component=None):
        """Every Registration (of one component)."""

    def put_registration(registration):
        """Insert or replace; fails with RegistrationConflict when the foreign id is taken."""

    def delete_registration(component, jid):
        """Remove a user and everything stored for them; fires with whether they existed."""

    def enqueue(item, claimed=True):
        """Store a QueueItem (outbox or inbox) durably, under a fresh claim of ours by default."""

    def enqueue_all(items, keys=None):
        """Store several QueueItems in one transaction, leaving out those whose key was seen; fires with which were stored."""

    def claim(component, direction, limit=100, now=None):
        """Take due QueueItems nobody holds a live lease on; each carries our claim token."""

    def finish(item):
        """Remove a row once its work is done, if our claim on it still stands; fires with the row count."""

    def finish_all(items):
        """finish() for many rows at once; fires with the list of their row counts, in order."""

    def release(item, next_attempt, attempts, error=None):
        """Give a row back for a later attempt, if our claim on it still stands."""

    def park(item, reason):
        """Set a row aside as a dead letter, if our claim on it still stands."""

    def checkpoint(item):
        """Store a row's changed payload, if our claim on it still stands; fires with the row count."""

    def hold(item, now=None):
        """Extend our lease on a row if it is still ours; fires with whether it is."""

    def renew(now=None):
        """Extend every live lease this process holds, and its heartbeat."""

    def start_instance(host, pid):
        """Register this process; fails with InstanceConflict if its id (or SQLite file) is in use."""

    def stop_instance():
        """Unregister this process on a clean stop."""

    def put_message_id(component, jid, xmpp_id, foreign_id, contact, resource=None, receipt=False, verdict_by=None):
        """Remember which XMPP id became which foreign id (receipts, bounces)."""

    def message_by_foreign_id(component, foreign_id, jid=None):
        """(jid, xmpp_id, contact, resource, receipt) of a message (of user ``jid`` if given), or None."""

    def confirm_message(component, foreign_id):
        """Clear the watch on a message the network has now spoken about."""

    def overdue_messages(component, now=None):
        """Take the messages whose verdict is overdue (each once, across processes)."""

    def archive_room_message(row):
        """Store a room message for one user in the next group commit; no Deferred (settled() fires once it is in)."""

    def room_archive_page(component, jid, room, after=None, before=None, start_us=None, end_us=None, limit=100,
                          last=False):
        """A page of a user's room archive: (rows, whether more match beyond it)."""

    def room_archive_seq(component, jid, room, id_):
        """The ordering key of the archived message known by stanza-id ``id_``, or None."""

    def has_room_archive(component, jid, room):
        """Whether the user has any archived message of the room."""

    def roster_contact(component, jid, address):
        """How a contact was put in the user's roster ("roster", "subscription"), or None."""

    def put_roster_contact(component, jid, address, method):
        """Remember that a contact was put in the user's roster, and how."""

    def known_contacts(component, jid, limit=1000):
        """The foreign addresses the user is known to have talked with (roster import)."""


class IFileUpload(Interface):
    """
    The XMPP side's way to put a file on a user's own server (XEP-0363),
    attached to the bridge with ``Bridge.attach_uploads``.
    """

    def upload(user, data, name, content_type):
        """Deferred firing with the file's URL on ``user``'s server, or None when it has no (usable) upload
        service or the file is larger than it takes: the caller then serves the file itself."""

    def available(user):
        """Deferred firing with whether ``user``'s server has an upload service the gateway may use."""

    def is_upload_url(user, url):
        """Deferred firing with whether ``url`` is a file on ``user``'s server's upload service (a body that is
        only such a URL is a file, not a text)."""
