"""XEP-0092 software version. The operating system is left out: it helps attackers, not users."""

from twisted.words.xish import domish

from gateway import __version__
from wokkel.subprotocols import IQHandlerMixin, XMPPHandler

NS_VERSION = "jabber:iq:version"


class VersionHandler(XMPPHandler, IQHandlerMixin):
    iqHandlers = {f"/iq[@type='get']/query[@xmlns='{NS_VERSION}']": "on_version"}

    def connectionInitialized(self):
        self.xmlstream.addObserver(f"/iq[@type='get']/query[@xmlns='{NS_VERSION}']", self.handleRequest)

    def on_version(self, iq):
        query = domish.Element((NS_VERSION, "query"))
        query.addElement("name", content="xmpp-gateway")
        query.addElement("version", content=__version__)
        return query
