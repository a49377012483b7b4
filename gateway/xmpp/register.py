"""
XEP-0077 in-band registration with XEP-0004 forms whose fields the adapter
declares. Legacy fields are offered only where the adapter's field has a
standard XEP-0077 name (no new elements in jabber:iq:register), and an empty
password never blanks a stored one.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from gateway.model import GatewayError
from gateway.xmpp.forms import MAX_VALUE_LENGTH, FormError, build_form, checked_submission, submitted_form
from gateway.xmpp.stanzas import parse_jid
from gateway.xmpp.handler import ComponentHandler
from gateway.xmpp.roster import IMPORT_FIELD
from wokkel.subprotocols import IQHandlerMixin

log = Logger(namespace="gateway.xmpp.register")

NS_REGISTER = "jabber:iq:register"
#: The field names XEP-0077 defines; only these may appear as legacy elements.
LEGACY_FIELDS = frozenset({"username", "nick", "password", "name", "first", "last", "email", "address", "city",
                           "state", "zip", "phone", "url", "date", "misc", "text", "key"})


def stanza_error(e: GatewayError) -> StanzaError:
    return StanzaError(e.condition, e.error_type, e.text or None)


class RegisterHandler(ComponentHandler, IQHandlerMixin):
    iqHandlers = {
        f"/iq[@type='get']/query[@xmlns='{NS_REGISTER}']": "on_get",
        f"/iq[@type='set']/query[@xmlns='{NS_REGISTER}']": "on_set",
    }

    def __init__(self, stream, bridge, presence, roster=None):
        super().__init__(stream, bridge)
        self.presence = presence
        self.adapter = bridge.adapter
        #: gateway.xmpp.roster.RosterKeeper: the form then offers to import the user's known contacts.
        self.roster = roster

    def _form_fields(self) -> list:
        fields = list(self.adapter.registration_fields)
        if self.roster is not None:
            fields.append(IMPORT_FIELD)
        return fields

    def connectionInitialized(self):
        self.xmlstream.addObserver(f"/iq[@type='get' or @type='set']/query[@xmlns='{NS_REGISTER}']",
                                   self.handleRequest)

    @staticmethod
    def _user(iq) -> str:
        to = parse_jid(iq.getAttribute("to"))
        if to is not None and to.user:
            raise StanzaError("service-unavailable", text="register with the gateway itself, not a contact")
        return parse_jid(iq["from"]).userhost()

    @defer.inlineCallbacks
    def on_get(self, iq):
        reg = yield self.bridge.registration(self._user(iq))
        fields = self._form_fields()
        values = {}
        if reg is not None:
            values = {**self.adapter.registration_values(reg), **{f.var: "" for f in fields if f.secret}}
        query = domish.Element((NS_REGISTER, "query"))
        query.addElement("instructions", content=self.adapter.instructions)
        if reg is not None:
            query.addElement("registered")
        for f in fields:
            if f.var in LEGACY_FIELDS:
                value = values.get(f.var)
                query.addElement(f.var, content=None if f.secret or value is None else str(value))
        form = build_form(fields, values, NS_REGISTER, title=f"Register with {self.stream.domain}",
                          instructions=self.adapter.instructions)
        query.addChild(form.toElement())
        return query

    @defer.inlineCallbacks
    def on_set(self, iq):
        user = self._user(iq)
        query = next(iq.elements(NS_REGISTER, "query"))
        if any(c.name == "remove" for c in query.elements()):
            found = yield self.bridge.unregister(user)
            if not found:
                raise StanzaError("registration-required", text="you are not registered")
            self.presence.on_unregistered(user)
            return None
        x = submitted_form(query)
        if x is not None:
            # Checked against the form on_get offers: a wrong shape is refused, never guessed at.
            offered = build_form(self._form_fields(), {}, NS_REGISTER)
            try:
                values = checked_submission(x, offered)
            except FormError as e:
                raise StanzaError(e.condition, text=e.text)
            import_contacts = values.pop(IMPORT_FIELD.var, False) is True
        else:
            import_contacts = False
            values = {c.name: str(c) for c in query.elements()
                      if c.name in LEGACY_FIELDS and c.uri == NS_REGISTER}
            if not values:
                raise StanzaError("bad-request", text="send a filled-in form or the registration fields")
            if any(len(v) > MAX_VALUE_LENGTH for v in values.values()):
                raise StanzaError("bad-request", text=f"a field is longer than {MAX_VALUE_LENGTH} characters")
        try:
            reg, new = yield self.bridge.register(user, values)
        except GatewayError as e:
            raise stanza_error(e)
        self.presence.on_registered(user, new)
        if import_contacts and self.roster is not None:
            self.roster.import_contacts(user).addErrback(
                lambda f: log.failure("importing {user}'s contacts failed", f, user=user))
        return None
