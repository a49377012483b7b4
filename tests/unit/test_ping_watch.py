"""The keepalive's judgement of a silent server, on a clock we drive (no server needed)."""

from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.words.protocols.jabber import xmlstream
from wokkel.subprotocols import StreamManager

from gateway.xmpp.ping import PingHandler


class _Transport(StringTransport):
    """A peer that never reads: everything written stays unsent."""

    aborted = False

    def abortConnection(self):
        self.aborted = True


def _stream(clock: task.Clock, timeout: float = 1.0):
    factory = xmlstream.XmlStreamFactory(xmlstream.Authenticator())
    manager = StreamManager(factory)
    pinger = PingHandler("gw.example", interval=0, timeout=timeout, clock=clock)
    pinger.setHandlerParent(manager)
    xs = factory.buildProtocol(None)
    transport = _Transport()
    xs.makeConnection(transport)
    xs.dispatch(xs, xmlstream.STREAM_AUTHD_EVENT)
    return pinger, transport


def test_a_silent_server_is_dropped_within_two_timeouts():
    clock = task.Clock()
    pinger, transport = _stream(clock)
    pinger._ping()
    for _ in range(20):
        clock.advance(0.1)
    assert transport.aborted


def test_a_late_check_of_our_own_is_no_evidence_against_the_server():
    """The gateway was not scheduled for 3 timeouts (a busy machine): the check that wakes up late
    measures a fresh interval instead of dropping a stream it could not watch."""
    clock = task.Clock()
    pinger, transport = _stream(clock)
    pinger._ping()
    clock.advance(3.0)
    assert not transport.aborted
    for _ in range(20):                   # watched on time from here: a server that stays silent goes
        clock.advance(0.1)
    assert transport.aborted
