"""The base of the handlers that serve one component: its stream and its bridge."""

from wokkel.subprotocols import XMPPHandler


class ComponentHandler(XMPPHandler):
    def __init__(self, stream, bridge):
        super().__init__()
        self.stream = stream
        self.bridge = bridge
        self.domain = stream.domain
