"""
The outbox's hot path: a message from acceptance (its row on disk) to the
adapter's send and its row's delete goes through as few Deferred layers as it
can, each layer being a callback registered, run and often a Deferred made.
Counted on the real stack (stream, bridge, outbox, SQLite registry, echo
adapter), with the guarantees of the path checked in the same run: every
message sent once, in order per contact, and every row gone at the end.
"""

import os
import re

import pytest_twisted
from twisted.internet import defer, reactor, task

from gateway.model import OutboundMessage, SendResult
from tests.unit.wire import DOMAIN, Wire

LAYERS = ("addCallback", "addErrback", "addCallbacks", "addBoth")


def count_layers(monkeypatch) -> dict[str, int]:
    counts = dict.fromkeys(LAYERS + ("Deferred",), 0)
    for name in LAYERS:
        real = getattr(defer.Deferred, name)

        def counting(self, *a, __real=real, __name=name, **k):
            counts[__name] += 1
            return __real(self, *a, **k)

        monkeypatch.setattr(defer.Deferred, name, counting)
    init = defer.Deferred.__init__

    def counting_init(self, *a, **k):
        counts["Deferred"] += 1
        init(self, *a, **k)

    monkeypatch.setattr(defer.Deferred, "__init__", counting_init)
    return counts


PING = re.compile(rb"""<iq ([^>]*)><ping xmlns=["']urn:xmpp:ping["']\s*/></iq>""")


def round_trips(wire, first: int, n: int, contacts: int = 5) -> defer.Deferred:
    """
    Send ``n`` messages as the server would and fire with their echoes. The
    pump is a plain timer, no Deferred of its own, so what is counted is the
    gateway's. The barrier pings one of the component's own JIDs: as the
    server does, the ping is routed back to the gateway, which answers it.
    """
    wire.feed("".join(f"<message from='bench@example.org/b' to='c{i % contacts}@{DOMAIN}' type='chat' id='m{i}'>"
                      f"<body>t{i}</body></message>" for i in range(first, first + n)))
    echoes, done, buffer = [], defer.Deferred(), [b""]
    deadline = reactor.seconds() + 20

    def pump():
        data = buffer[0] + wire.transport.value()
        wire.transport.clear()
        cut = data.rfind(b">") + 1
        data, buffer[0] = data[:cut], data[cut:]
        echoes.extend(BODY.findall(data))
        pings = [m.group(0) for m in PING.finditer(data)]
        if pings:
            wire.xs.dataReceived(b"".join(pings))
        if len(echoes) >= n or reactor.seconds() > deadline:
            done.callback(echoes)
        else:
            reactor.callLater(0.0005, pump)

    reactor.callLater(0, pump)
    return done


BODY = re.compile(rb"<message from=['\"]([^'\"]+)['\"][^>]*><body>([^<]*)</body>")


@defer.inlineCallbacks
def drained(wire):
    for _ in range(500):
        data = wire.transport.value()
        wire.transport.clear()
        pings = [m.group(0) for m in PING.finditer(data)]
        if pings:
            wire.xs.dataReceived(b"".join(pings))
        depth = yield wire.registry.queue_depth(DOMAIN)
        if not depth["out"] and not depth["in"]:
            return depth
        yield task.deferLater(reactor, 0.005, lambda: None)
    return depth


@pytest_twisted.inlineCallbacks
def test_layers_per_message(tmp_path, monkeypatch):
    wire = yield Wire(os.path.join(tmp_path, "r.sqlite"), limits={"rate": 1e9, "burst": 10 ** 9}).start()
    try:
        reply = yield wire.register("bench@example.org/b", "bench")
        assert reply.getAttribute("type") == "result"
        wire.sent()
        yield round_trips(wire, 0, 20)                  # warm: caches, the registration
        yield drained(wire)
        counts = count_layers(monkeypatch)
        n = 300
        echoes = yield round_trips(wire, 100, n)
        monkeypatch.undo()
        per_message = {k: v / n for k, v in counts.items()}
        print(per_message)
        # Each message echoed once, in order per contact; the queue is empty (checked in round_trips).
        echoes = [(who.decode(), body.decode()) for who, body in echoes]
        assert sorted(echoes) == sorted((f"c{i % 5}@{DOMAIN}", f"t{i}") for i in range(100, 100 + n))
        for c in range(5):
            mine = [int(body[1:]) for who, body in echoes if who == f"c{c}@{DOMAIN}"]
            assert mine == sorted(mine)
        assert (yield drained(wire)) == {"out": 0, "in": 0, "parked": 0}
        layers = sum(per_message[k] for k in LAYERS)
        assert layers <= BOUND_LAYERS, per_message
        assert per_message["Deferred"] <= BOUND_DEFERREDS, per_message
    finally:
        wire.stop()


#: Measured on the path before (9c4801a): 11.1 layers and 4.05 Deferreds per message; now 7.1 and 3.05.
BOUND_LAYERS = 8
BOUND_DEFERREDS = 3.5


class PipeliningAdapter:
    name = "fake"
    pipelining = True

    def __init__(self):
        self.sent = []

    def send(self, message, registration):
        self.sent.append(message.id)
        return defer.succeed(SendResult(foreign_id=f"f-{message.id}"))


@pytest_twisted.inlineCallbacks
def test_a_row_re_claimed_for_us_while_its_delete_waited_is_still_deleted_and_told_once():
    from tests.unit.test_outbox_faults import COMP, make

    adapter = PipeliningAdapter()
    gate = defer.Deferred()
    adapter.send = lambda message, registration: (adapter.sent.append(message.id), gate)[1]
    reg, ob, _adapter, _out, _ = yield make(lease=60.0, adapter=adapter)
    told = []
    ob.on_sent = lambda message, result: told.append((message.id, result.foreign_id))
    finishing = []
    finish = reg.finish
    reg.finish = lambda item: (finishing.append(item), finish(item))[1]
    try:
        ob.ready.callback(None)
        m = OutboundMessage(component=COMP, user="u@example.org", recipient="bob", body="hi")
        yield ob.submit(m)                      # stored; the send is under way
        assert adapter.sent == [m.id]
        busy = reg._batch.add("UPDATE queue SET attempts = attempts WHERE id = ?", ("none",))
        gate.callback(SendResult(foreign_id="f-1"))      # sent: the delete waits behind the busy write
        [item] = finishing
        # Meanwhile a poll re-claims the row for us: a new token, in the row (before the delete
        # runs) and in memory. The delete under the old token is fenced out; the outbox deletes
        # again under the new one, and tells on_sent once.
        changed = reg._interaction(lambda txn: txn.execute("UPDATE queue SET claim_token = 'new' WHERE id = ?",
                                                           (m.id,)))
        item.token = "new"
        yield busy
        yield changed
        for _ in range(20):
            yield reg.settled()
            yield task.deferLater(reactor, 0.001, lambda: None)
        assert len(finishing) == 2 and finishing[1] is item
        assert (yield reg.queue_depth(COMP)) == {"out": 0, "in": 0, "parked": 0}
        assert told == [(m.id, "f-1")]
    finally:
        reg.close()
