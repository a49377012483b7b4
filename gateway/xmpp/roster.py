"""
Contacts in the user's roster, once each.

A contact a user writes to or hears from (an SMS number, an email address, an
IRC nick) is put in the user's roster the first time: pushed as a roster item
with a name and the network's group when the user's server granted this
component roster access (XEP-0356, gateway/xmpp/privilege.py), else asked for
with a subscription request from the contact's JID carrying its name
(XEP-0172). Which contacts were put there, and how, is kept in the registry
(``roster_contacts``), so neither a restart nor a second process asks again.

A server that advertises roster access but fails the push (ejabberd 23.01's
roster set crashes with ``internal-server-error``) is not asked again for the
life of the connection: that contact, and every later one of that host, gets
the subscription request instead.

``import_contacts`` puts every contact the registry knows for a user (those put
in the roster before and the recipients of messages still on record) in the
roster again: at registration (a boolean field in the form) or with the
``import-contacts`` ad-hoc command.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from gateway.bridge.ratelimit import TokenBuckets
from gateway.interfaces import IConnections, IContactNames, IGroupChat, IRawCommands
from gateway.model import Field
from gateway.xmpp.command_base import Command, Done
from gateway.xmpp.escaping import EscapingError, escape
from gateway.xmpp.privilege import Grants
from gateway.xmpp.stanzas import xml_safe
from wokkel import generic

log = Logger(namespace="gateway.xmpp.roster")

NS_ROSTER = "jabber:iq:roster"
NS_NICK = "http://jabber.org/protocol/nick"
#: The default roster group of each network, by the adapter's gateway type.
GROUPS = {"sms": "SMS", "smtp": "Email", "irc": "IRC"}
#: Contacts one import puts in the roster at most.
IMPORT_LIMIT = 1000
#: Longest name and group written into a roster item.
MAX_NAME = 100
#: Roster items read when looking for a contact (a larger roster counts as "not known").
MAX_ROSTER_READ = 20000
#: The registration form's field asking for an import.
IMPORT_FIELD = Field("import_contacts", "Add the contacts I already talked with here to my roster",
                     type="boolean", default=False)


class _RosterIQ(generic.Request):
    """A roster get or set to the user's bare JID (what mod_privilege takes from a privileged component)."""

    stanzaKind = "iq"

    def __init__(self, user: str, sender: str, item: domish.Element | None, timeout: float):
        super().__init__(recipient=JID(user), sender=JID(sender), stanzaType="get" if item is None else "set")
        self.item = item
        self.timeout = timeout

    def toElement(self):
        element = super().toElement()
        query = element.addElement((NS_ROSTER, "query"))
        if self.item is not None:
            query.addChild(self.item)
        return element


class RosterKeeper:
    """Puts contacts in users' rosters for one component (all its connections)."""

    #: (user, address) pairs remembered as done in memory; past it the memory starts again (the registry knows).
    MAX_REMEMBERED = 100000
    #: Contacts being added at once, over all users (registry lookups and pushes in flight).
    MAX_BUSY = 1000
    INBOUND_BURST = 20
    INBOUND_PER_HOUR = 20

    def __init__(self, group, bridge, grants: Grants, mode: str = "auto", group_name: str = "",
                 timeout: float = 30.0):
        self.streams = group
        self.bridge = bridge
        self.adapter = bridge.adapter
        self.domain = group.domain
        self.grants = grants
        self.mode = mode
        self.group_name = (xml_safe(group_name or GROUPS.get(self.adapter.gateway_type)
                                    or self.adapter.display_name) or "")[:MAX_NAME]
        self.timeout = timeout
        self._done: set[tuple[str, str]] = set()
        self._busy: dict[tuple[str, str], defer.Deferred] = {}
        #: Hosts whose server failed a roster push on this connection: subscription requests instead.
        self._push_failed: set[str] = set()
        self._inbound_limit = TokenBuckets(self.INBOUND_PER_HOUR / 3600.0, self.INBOUND_BURST)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def connection_up(self) -> None:
        """A new connection: the server may have been fixed or upgraded, so pushes are tried again."""
        self._push_failed.clear()

    # -- which addresses are contacts -------------------------------------

    def is_contact(self, address: str) -> bool:
        """A person (or mailbox): not a room, nor a server the user sends commands to."""
        if not address or "," in address:
            return False                      # a group message's recipients
        adapter = self.adapter
        if IGroupChat.providedBy(adapter) and adapter.is_room(address):
            return False
        if IConnections.providedBy(adapter) and adapter.is_server(address):
            return False
        if IRawCommands.providedBy(adapter) and adapter.takes_commands(address):
            return False
        return True

    def contact_jid(self, address: str) -> str:
        return f"{escape(xml_safe(self.adapter.jid_localpart(address)))}@{self.domain}"

    def contact_name(self, address: str) -> str:
        name = self.adapter.contact_name(address) if IContactNames.providedBy(self.adapter) else address
        return (xml_safe(str(name or address)) or "")[:MAX_NAME]

    # -- seen in a conversation -------------------------------------------

    def seen(self, user: str, address: str, inbound: bool = False) -> None:
        """
        ``user`` wrote to or heard from (``inbound``) ``address``: put it in
        their roster unless that was done before. Called for every message, so
        the usual answer (done before) comes from memory; never raises.
        Anyone can mail or text a user from ever new addresses, so contacts
        heard from are added at most ``INBOUND_BURST`` at once and
        ``INBOUND_PER_HOUR`` an hour per user; one left out is added with a
        later message once the user is under the limit again.
        """
        if self.mode == "off":
            return
        key = (user, address)
        if key in self._done or key in self._busy or len(self._busy) >= self.MAX_BUSY:
            return
        try:
            if not self.is_contact(address):
                return
        except Exception:
            log.failure("is {address!r} a contact?", address=address)
            return
        if inbound and not self._inbound_limit.allow(user):
            log.debug("{user}: too many new contacts heard from; {address} not added now", user=user,
                      address=address)
            return
        d = self._busy[key] = self._add(user, address, again=False)
        d.addErrback(lambda f: log.warn("putting {address} in {user}'s roster failed: {why}", address=address,
                                        user=user, why=f.getErrorMessage()))
        d.addBoth(self._finished, key)

    def _finished(self, _, key) -> None:
        self._busy.pop(key, None)

    def forget(self, user: str) -> None:
        """The user unregistered (their rows are deleted): a new registration starts afresh."""
        self._done = {key for key in self._done if key[0] != user}

    @defer.inlineCallbacks
    def _add(self, user: str, address: str, again: bool):
        registry = self.bridge.registry
        if not again:
            method = yield registry.roster_contact(self.domain, user, address)
            if method is not None:
                self._remember(user, address)
                return method
        method = yield self.put(user, address)
        if method is not None:
            yield registry.put_roster_contact(self.domain, user, address, method)
            self._remember(user, address)
        return method

    def _remember(self, user: str, address: str) -> None:
        if len(self._done) >= self.MAX_REMEMBERED:
            self._done.clear()
        self._done.add((user, address))

    # -- putting one contact in the roster --------------------------------

    @defer.inlineCallbacks
    def put(self, user: str, address: str):
        """
        Push ``address`` into ``user``'s roster, or ask with a subscription
        request: fires with "roster", "subscription" or, when the roster can be
        read and has it already, "existing" (None when the address can be no JID).
        """
        try:
            jid = self.contact_jid(address)
        except EscapingError:
            return None
        name = self.contact_name(address)
        host = JID(user).host.lower()
        permissions = self.grants.get(host)
        if (self.mode == "auto" and permissions is not None and permissions.roster_set
                and host not in self._push_failed):
            if permissions.roster_get and (yield self._in_roster(user, jid)):
                # Added by the user before (perhaps with a name and group of their own): left as it is.
                return "existing"
            try:
                yield self.streams.current().request(_RosterIQ(user, self.domain, self._item(jid, name),
                                                               self.timeout))
                log.debug("{jid} pushed into {user}'s roster", jid=jid, user=user)
                return "roster"
            except (StanzaError, xmlstream.TimeoutError) as e:
                # Refused (ejabberd 23.01 crashes on it), or never answered (its error routed to another
                # connection of a shared listener): not asked again on this connection.
                self._push_failed.add(host)
                why = f"<{e.condition}/> {e.text or ''}" if isinstance(e, StanzaError) else "no answer"
                log.warn("{host} advertised roster access ({ns}) but a roster push for {user} failed ({why}): "
                         "subscription requests instead for {host}'s users until the next connection "
                         "(docs/servers.md)", host=host, ns=permissions.namespace, user=user, why=why.strip())
        self._subscribe(user, jid, name)
        return "subscription"

    @defer.inlineCallbacks
    def _in_roster(self, user: str, jid: str):
        """Whether ``jid`` is in ``user``'s roster already; None when the server does not say."""
        try:
            result = yield self.streams.current().request(_RosterIQ(user, self.domain, None, self.timeout))
        except (StanzaError, xmlstream.TimeoutError) as e:
            log.debug("roster of {user} not read: {e}", user=user, e=e)
            return None
        query = next(result.elements(NS_ROSTER, "query"), None)
        if query is None:
            return None
        for n, item in enumerate(query.elements(NS_ROSTER, "item")):
            if n >= MAX_ROSTER_READ:
                return None
            same = (item.getAttribute("jid") or "").lower() == jid.lower()
            if same and item.getAttribute("subscription") != "remove":
                return True
        return False

    def user_subscribed(self, user: str, address: str) -> None:
        """
        The user asked for the contact's presence (added it in their client): it
        is in their roster as they want it, so it is never pushed over.
        """
        key = (user, address)
        if self.mode == "off" or key in self._done or key in self._busy:
            return
        d = self._busy[key] = self._mark_existing(user, address)
        d.addErrback(lambda f: log.warn("remembering {address} in {user}'s roster failed: {why}",
                                        address=address, user=user, why=f.getErrorMessage()))
        d.addBoth(self._finished, key)

    @defer.inlineCallbacks
    def _mark_existing(self, user: str, address: str):
        registry = self.bridge.registry
        if (yield registry.roster_contact(self.domain, user, address)) is None:
            yield registry.put_roster_contact(self.domain, user, address, "existing")
        self._remember(user, address)

    def _item(self, jid: str, name: str) -> domish.Element:
        item = domish.Element((NS_ROSTER, "item"))
        item["jid"] = jid
        item["name"] = name
        # As slidge does: the gateway answers the contact's presence itself, no handshake is needed.
        item["subscription"] = "both"
        if self.group_name:
            item.addElement("group", content=self.group_name)
        return item

    def _subscribe(self, user: str, jid: str, name: str) -> None:
        presence = domish.Element((None, "presence"))
        presence["from"] = jid
        presence["to"] = user
        presence["type"] = "subscribe"
        presence.addElement((NS_NICK, "nick"), content=name)
        self.streams.send(presence)

    # -- import -------------------------------------------------------------

    @defer.inlineCallbacks
    def import_contacts(self, user: str):
        """Put every contact the registry knows for ``user`` in their roster again: {method: count}."""
        counts: dict[str, int] = {}
        if self.mode == "off":
            return counts
        addresses = yield self.bridge.registry.known_contacts(self.domain, user, IMPORT_LIMIT)
        for address in addresses:
            if not self.is_contact(address):
                continue
            method = yield self._add(user, address, again=True)
            if method is not None:
                counts[method] = counts.get(method, 0) + 1
        log.info("{user}: {n} contact(s) imported into the roster ({counts})", user=user, n=sum(counts.values()),
                 counts=counts)
        return counts


def describe(counts: dict[str, int]) -> str:
    """An import's outcome in plain words."""
    pushed, asked, there = counts.get("roster", 0), counts.get("subscription", 0), counts.get("existing", 0)
    if not pushed and not asked and not there:
        return "No contacts known yet: they appear in your roster as you write to them or hear from them."
    parts = [f"{there} contact(s) already in your roster, left as they are"] if there else []
    if pushed:
        parts.append(f"{pushed} contact(s) added to your roster")
    if asked:
        parts.append(f"{asked} subscription request(s) sent (your server does not let this gateway "
                     "edit your roster: accept them to add the contacts)")
    return "; ".join(parts) + "."


class ImportContactsCommand(Command):
    """XEP-0050 ``import-contacts``: every contact the registry knows for the user, into the roster."""

    node = "import-contacts"
    name = "Add my contacts to my roster"
    needs_registration = True

    def __init__(self, handler, keeper: RosterKeeper):
        super().__init__(handler)
        self.keeper = keeper

    @defer.inlineCallbacks
    def start(self, user):
        counts = yield self.keeper.import_contacts(user)
        raise Done(describe(counts))
