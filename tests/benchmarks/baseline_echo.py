"""
The baseline: the smallest wokkel echo component (no registry, no outbox, no
checks), on the same stack, so the gateway's figures can be read against it.
"""

import sys

from twisted.internet import reactor
from twisted.words.xish import domish

import gateway.xmpp.compat  # noqa: F401
from wokkel.component import Component
from wokkel.subprotocols import XMPPHandler


class Echo(XMPPHandler):
    def connectionInitialized(self):
        self.xmlstream.addObserver("/message", self.on_message)
        print("baseline: authenticated", flush=True)

    def on_message(self, msg):
        body = next((c for c in msg.elements() if c.name == "body"), None)
        if body is None:
            return
        reply = domish.Element((None, "message"))
        reply["to"] = msg["from"]
        reply["from"] = msg["to"]
        reply["type"] = "chat"
        reply.addElement("body", content=str(body))
        self.send(reply)


def main():
    domain, port, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    comp = Component("127.0.0.1", port, domain, secret)
    Echo().setHandlerParent(comp)
    comp.startService()
    reactor.run()


if __name__ == "__main__":
    main()
