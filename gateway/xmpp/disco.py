"""
XEP-0030 service discovery for the component and its contacts.

wokkel's DiscoHandler serves the queries and gathers answers from sibling
handlers that provide IDisco; it does not advertise disco#info and #items
itself, so this provider does. All of the component's features are listed
here, in one place, so the XEP-0115 hash on our presence matches what a
client gets when it asks.
"""

from __future__ import annotations

from twisted.words.protocols.jabber.jid import JID
from zope.interface import implementer

from gateway.interfaces import IGroupChat, ITyping
from gateway.xmpp.references import NS_CORRECT, NS_REACTIONS, NS_REPLY
from gateway.xmpp.caps import CAPS_NODE, verification_string
from gateway.xmpp.escaping import FEATURE as NS_JID_ESCAPING
from gateway.xmpp.escaping import unescape
from wokkel import disco
from wokkel.iwokkel import IDisco
from wokkel.subprotocols import XMPPHandler

NS_REGISTER = "jabber:iq:register"
NS_GATEWAY = "jabber:iq:gateway"
NS_VERSION = "jabber:iq:version"
NS_PING = "urn:xmpp:ping"
NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_RECEIPTS = "urn:xmpp:receipts"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_OOB = "jabber:x:oob"
NS_ADDRESS = "http://jabber.org/protocol/address"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MAM = "urn:xmpp:mam:2"
NS_SID = "urn:xmpp:sid:0"


@implementer(IDisco)
class GatewayDisco(XMPPHandler):
    def __init__(self, domain: str, name: str, adapter, archive: bool = False):
        super().__init__()
        self.domain = domain
        self.name = name
        self.adapter = adapter
        #: Rooms keep an archive (gateway/bridge/archive.py): they say so (XEP-0313, XEP-0359).
        self.archive = archive
        # Corrections, replies and reactions reach every network, in its own form or in words.
        network = [NS_CORRECT, NS_REPLY, NS_REACTIONS]
        if "receipts" in adapter.features:
            network.append(NS_RECEIPTS)
        if "chatstates" in adapter.features or ITyping.providedBy(adapter):
            network.append(NS_CHATSTATES)
        if "attachments" in adapter.features:
            network.append(NS_OOB)
        if "group" in adapter.features:
            network.append(NS_ADDRESS)
        self.identities = [("gateway", adapter.gateway_type, name)]
        self.features = sorted({disco.NS_DISCO_INFO, disco.NS_DISCO_ITEMS, NS_REGISTER, NS_GATEWAY, NS_VERSION,
                                NS_PING, NS_COMMANDS, NS_JID_ESCAPING, *network})
        self.contact_identities = [("client", adapter.gateway_type, name)]
        self.contact_features = sorted({disco.NS_DISCO_INFO, NS_PING, *network})
        self.ver = verification_string(self.identities, self.features)
        self.contact_ver = verification_string(self.contact_identities, self.contact_features)

    def getDiscoInfo(self, requestor: JID, target: JID, nodeIdentifier: str = ""):
        if target.user and self._is_room(target.user) and not nodeIdentifier:
            return [disco.DiscoIdentity("conference", self.adapter.room_identity_type,
                                        self.adapter.room_name(self.adapter.normalize_address(unescape(target.user)))),
                    disco.DiscoFeature(NS_MUC), disco.DiscoFeature(disco.NS_DISCO_INFO),
                    disco.DiscoFeature("muc_persistent"), disco.DiscoFeature("muc_open"),
                    disco.DiscoFeature("muc_nonanonymous"), disco.DiscoFeature("muc_unsecured")] + (
                        [disco.DiscoFeature(NS_MAM), disco.DiscoFeature(NS_SID)] if self.archive else [])
        if target.user:
            if nodeIdentifier in ("", f"{CAPS_NODE}#{self.contact_ver}"):
                return ([disco.DiscoIdentity(*i) for i in self.contact_identities]
                        + [disco.DiscoFeature(f) for f in self.contact_features])
            return []
        if nodeIdentifier in ("", f"{CAPS_NODE}#{self.ver}"):
            return ([disco.DiscoIdentity(*i) for i in self.identities]
                    + [disco.DiscoFeature(f) for f in self.features])
        return []

    def _is_room(self, localpart: str) -> bool:
        if not IGroupChat.providedBy(self.adapter):
            return False
        try:
            return self.adapter.is_room(self.adapter.normalize_address(unescape(localpart)))
        except Exception:
            return False

    def getDiscoItems(self, requestor: JID, target: JID, nodeIdentifier: str = ""):
        return []
