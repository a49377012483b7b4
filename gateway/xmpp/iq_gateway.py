"""
XEP-0100 §6 jabber:iq:gateway: a user types a foreign address, the gateway
answers with the JID to write to (the adapter normalises, XEP-0106 escapes).
"""

from __future__ import annotations

from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from gateway.model import AddressError
from gateway.xmpp.escaping import EscapingError, escape
from wokkel.subprotocols import IQHandlerMixin, XMPPHandler

NS_GATEWAY = "jabber:iq:gateway"


class GatewayIQHandler(XMPPHandler, IQHandlerMixin):
    iqHandlers = {
        f"/iq[@type='get']/query[@xmlns='{NS_GATEWAY}']": "on_get",
        f"/iq[@type='set']/query[@xmlns='{NS_GATEWAY}']": "on_set",
    }

    def __init__(self, domain: str, bridge):
        super().__init__()
        self.domain = domain
        self.bridge = bridge

    def connectionInitialized(self):
        self.xmlstream.addObserver(f"/iq[@type='get' or @type='set']/query[@xmlns='{NS_GATEWAY}']",
                                   self.handleRequest)

    def on_get(self, iq):
        query = domish.Element((NS_GATEWAY, "query"))
        query.addElement("desc", content=self.bridge.adapter.address_prompt)
        query.addElement("prompt")
        return query

    def on_set(self, iq):
        query = next(iq.elements(NS_GATEWAY, "query"))
        prompt = next((str(c) for c in query.elements() if c.name == "prompt"), None)
        if not prompt:
            raise StanzaError("bad-request", text="give the address in <prompt/>")
        try:
            address = self.bridge.normalize_address(prompt)
            jid = f"{escape(self.bridge.adapter.jid_localpart(address))}@{self.domain}"
        except AddressError as e:
            raise StanzaError("not-acceptable", "modify", e.text)
        except EscapingError as e:
            raise StanzaError("not-acceptable", "modify", str(e))
        result = domish.Element((NS_GATEWAY, "query"))
        result.addElement("jid", content=jid)
        # Clients written against the older version of XEP-0100 read <prompt/>.
        result.addElement("prompt", content=jid)
        return result
