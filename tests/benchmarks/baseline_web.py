"""
The webhook baseline: a bare twisted.web resource answering every POST with
200 and Twilio's empty TwiML, nothing parsed, checked or stored, on the same
stack as the gateway's web site, so the gateway's webhook figures can be read
against it.

    python -m tests.benchmarks.baseline_web PORT
"""

import sys

from twisted.internet import reactor
from twisted.web import resource, server

REPLY = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


class Hook(resource.Resource):
    isLeaf = True

    def render_POST(self, request):
        request.content.read()
        request.setHeader(b"content-type", b"text/xml")
        return REPLY


def main():
    port = int(sys.argv[1])
    site = server.Site(Hook())
    site.noisy = False
    reactor.listenTCP(port, site, interface="127.0.0.1")
    print("baseline_web: listening", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
