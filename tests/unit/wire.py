"""
A component on a StringTransport: the real stream, parser, handlers, bridge,
registry (SQLite) and echo adapter, with the test playing the XMPP server's
side of the XEP-0114 handshake and reading back what the gateway writes.
"""

from __future__ import annotations

import hashlib

from twisted.internet import defer, reactor, task
from twisted.internet.testing import StringTransport
from twisted.words.xish import domish

from gateway.bridge import Bridge
from gateway.config import ComponentConfig
from gateway.registry import SQLRegistry
from gateway.registry.crypto import SecretBox
from gateway.adapters.echo import EchoAdapter
from gateway.xmpp.service import build_component

DOMAIN = "echo.example.org"
SECRET = "unit-secret"

XMPP = {"host": "127.0.0.1", "port": 5347, "stanza_size_limit": 4000, "ping_interval": 0.0, "ping_timeout": 5.0,
        "reconnect_initial_delay": 1.0, "reconnect_max_delay": 5.0}
GATEWAY = {"allowed_domains": ["example.org"], "admins": ["boss@example.org"], "instance_id": "unit"}
OUTBOX = {"retry_initial": 0.1, "retry_max": 0.2, "deadline": 1.0, "lease": 30.0, "poll_interval": 0.1}
LIMITS = {"rate": 100.0, "burst": 100}


class Wire:
    def __init__(self, path: str, options: dict | None = None, limits: dict | None = None, clock=reactor,
                 xmpp: dict | None = None, adapter=EchoAdapter, roster: str = "off"):
        self.registry = SQLRegistry(f"sqlite:///{path}", SecretBox.generate(), "unit")
        opts = {"delay": 0.0, "unreachable": ["down"], "rejecting": ["wall"], **(options or {})}
        self.bridge = Bridge(DOMAIN, adapter, opts, self.registry, clock, OUTBOX, limits or LIMITS)
        comp = ComponentConfig(DOMAIN, SECRET, "echo", adapter, "Echo gateway", "", 0, opts, roster=roster)
        self.fatal = []
        self.stream = build_component(comp, {**XMPP, **(xmpp or {})}, GATEWAY, self.bridge, self.fatal.append,
                                      clock)
        self.received: list[domish.Element] = []
        self._parser = domish.elementStream()
        self._parser.DocumentStartEvent = lambda root: None
        self._parser.ElementEvent = self.received.append
        self._parser.DocumentEndEvent = lambda: None

    @defer.inlineCallbacks
    def start(self):
        yield self.registry.open()
        self.bridge.startService()
        self.stream.running = True
        self.transport = StringTransport()
        self.xs = self.stream.factory.buildProtocol(None)
        self.xs.makeConnection(self.transport)
        self.feed("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' "
                  f"from='{DOMAIN}' id='s1'>")
        expected = hashlib.sha1(("s1" + SECRET).encode()).hexdigest()
        assert expected in self._read_raw()
        self.feed("<handshake/>")
        assert self.stream.connected
        self.sent()  # the handshake and anything sent at start
        return self

    def _read_raw(self) -> str:
        data = self.transport.value()
        self.transport.clear()
        self._parser.parse(data)
        return data.decode("utf-8")

    def feed(self, xml: str) -> None:
        self.xs.dataReceived(xml.encode("utf-8"))

    def sent(self) -> list[domish.Element]:
        """Everything written and not yet looked at (and now looked at)."""
        self._read_raw()
        new = list(self.received)
        self.received.clear()
        return new

    @defer.inlineCallbacks
    def wait(self, predicate, timeout: float = 5.0):
        """The first stanza not yet looked at that matches; the others stay for later."""
        waited = 0.0
        while waited < timeout:
            self._read_raw()
            for i, el in enumerate(self.received):
                if predicate(el):
                    del self.received[i]
                    return el
            yield task.deferLater(reactor, 0.01, lambda: None)
            waited += 0.01
        raise AssertionError("the gateway wrote no matching stanza")

    @defer.inlineCallbacks
    def quiet(self, seconds: float = 0.3):
        yield task.deferLater(reactor, seconds, lambda: None)
        return self.sent()

    @defer.inlineCallbacks
    def iq(self, itype: str, payload: str, sender: str = "alice@example.org/phone", to: str = DOMAIN,
           iq_id: str = "q1"):
        self.feed(f"<iq type='{itype}' id='{iq_id}' from='{sender}' to='{to}'>{payload}</iq>")
        reply = yield self.wait(lambda el: el.name == "iq" and el.getAttribute("id") == iq_id)
        return reply

    @defer.inlineCallbacks
    def register(self, user: str = "alice@example.org/phone", username: str = "alice", password: str = ""):
        fields = f"<field var='username'><value>{username}</value></field>"
        if password:
            fields += f"<field var='password'><value>{password}</value></field>"
        reply = yield self.iq("set", "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>"
                                     f"{fields}</x></query>", sender=user, iq_id=f"reg-{username}")
        return reply

    def stop(self):
        self.stream.running = False
        self.bridge.stopService()
        self.xs.connectionLost(None)
        self.registry.close()


def children(el: domish.Element, name: str) -> list[domish.Element]:
    return [c for c in el.elements() if c.name == name]


def error_of(el: domish.Element) -> tuple[str | None, str | None]:
    for err in children(el, "error"):
        cond = next((c.name for c in err.elements() if c.name != "text"), None)
        text = next((str(c) for c in err.elements() if c.name == "text"), None)
        return cond, text
    return None, None


def find(el: domish.Element, *path: str):
    """The first descendant following element names in ``path``."""
    for name in path:
        el = next((c for c in el.elements() if c.name == name), None)
        if el is None:
            return None
    return el
