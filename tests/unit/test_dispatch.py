"""
StanzaRouter (gateway/xmpp/dispatch.py): the stream's observers called exactly
as Twisted's EventDispatcher calls them, with each stanza matched only against
the queries that can match its kind.
"""

from __future__ import annotations

import os
import tempfile

import pytest_twisted
from twisted.words.xish import domish, utility, xpath

from gateway.xmpp.dispatch import RoutedXmlStream, StanzaRouter
from tests.unit.wire import DOMAIN, Wire

QUERIES = [
    ("/message", 0), ("/message/privilege", 10), ("/message/x[@xmlns='u']/invite", 20), ("/presence", 10),
    ("/presence", 0), ("/iq[@type='get']/ping[@xmlns='urn:xmpp:ping']", 1),
    ("/iq[@type='get']/ping[@xmlns='urn:xmpp:ping']", 0), ("/iq[@type='error']", 0),
    ("/iq[@type='get' or @type='set']/query[@xmlns='jabber:iq:register']", 0), ("/iq", -1000),
    ("//body", 5), ("/*", 3), ("/error[@xmlns='http://etherx.jabber.org/streams']", 0),
]


def parse(xml: str) -> domish.Element:
    got = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = got.append
    stream.DocumentEndEvent = lambda: None
    stream.parse(f"<s xmlns='jabber:component:accept'>{xml}</s>".encode())
    return got[0]


STANZAS = [
    "<message to='a@b' type='chat'><body>x</body></message>",
    "<message to='a@b'><privilege xmlns='urn:xmpp:privilege:2'/></message>",
    "<message><x xmlns='u'><invite/></x></message>",
    "<presence/>",
    "<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
    "<iq type='set' id='2'><query xmlns='jabber:iq:register'/></iq>",
    "<iq type='error' id='3'/>",
    "<iq type='result' id='4'/>",
    "<error xmlns='http://etherx.jabber.org/streams'/>",
    "<other><body/></other>",
]


def observed(dispatcher, calls: list, queries=QUERIES):
    for i, (query, priority) in enumerate(queries):
        dispatcher.addObserver(query, lambda el, i=i: calls.append(i), priority=priority)


def test_calls_the_same_observers_in_the_same_order_as_twisted():
    for xml in STANZAS:
        theirs, ours = [], []
        plain, routed = utility.EventDispatcher(), StanzaRouter()
        observed(plain, theirs)
        observed(routed, ours)
        found = (plain.dispatch(parse(xml)), routed.dispatch(parse(xml)))
        assert ours == theirs, xml
        assert found[0] == found[1]


def test_a_message_is_not_matched_against_iq_or_presence_queries():
    tried = []

    class Spy(xpath.XPathQuery):
        def matches(self, elem):
            tried.append(self.queryStr)
            return super().matches(elem)

    routed = StanzaRouter()
    for query, priority in QUERIES:
        routed.addObserver(Spy(query), lambda el: None, priority=priority)
    routed.dispatch(parse(STANZAS[0]))
    # "/message" alone needs no match; "//body" and "/*" can match anything.
    assert sorted(tried) == sorted(["/message/privilege", "/message/x[@xmlns='u']/invite", "//body", "/*"])


def test_one_time_observers_and_changes_during_a_dispatch_as_twisted():
    for dispatcher in (utility.EventDispatcher(), StanzaRouter()):
        calls = []

        def first(el):
            calls.append("first")
            dispatcher.addObserver("/message", lambda el: calls.append("added"), priority=-5)
            dispatcher.removeObserver("/message", late)

        def late(el):
            calls.append("late")

        dispatcher.addOnetimeObserver("/message", first, priority=5)
        dispatcher.addObserver("/message", late, priority=-1)
        message = parse(STANZAS[0])
        dispatcher.dispatch(message)
        dispatcher.dispatch(message)
        dispatcher.dispatch(parse(STANZAS[3]))       # a presence: nobody
        assert calls == ["first", "late", "added"], type(dispatcher)
        assert dispatcher.dispatch(message) is True
        dispatcher.removeObserver("/message", calls.append)
        assert not dispatcher.dispatch(parse(STANZAS[3]))


def test_a_failing_observer_does_not_stop_the_others():
    routed = StanzaRouter()
    calls = []

    def boom(el):
        raise ValueError("boom")

    routed.addObserver("/message", boom, priority=1)
    routed.addObserver("/message", calls.append)
    routed.dispatch(parse(STANZAS[0]))
    assert len(calls) == 1
    assert routed._dispatchDepth == 0


def test_named_events_go_as_before():
    routed = StanzaRouter()
    got = []
    routed.addObserver("//event/stream/authd", got.append)
    routed.dispatch("x", "//event/stream/authd")
    assert got == ["x"]


@pytest_twisted.inlineCallbacks
def test_the_component_stream_dispatches_through_the_router():
    wire = Wire(os.path.join(tempfile.mkdtemp(prefix="gwdisp-"), "r.sqlite"))
    yield wire.start()
    try:
        assert isinstance(wire.xs, RoutedXmlStream)
        reply = yield wire.iq("get", "<ping xmlns='urn:xmpp:ping'/>")
        assert reply.getAttribute("type") == "result"
        reply = yield wire.iq("get", "<nothing xmlns='urn:example:none'/>", iq_id="q2")
        assert reply.getAttribute("type") == "error"      # the last observer's answer, as before
        wire.feed(f"<message from='alice@example.org/phone' to='x@{DOMAIN}' type='chat' id='m1'><body>hi</body>"
                  "</message>")
        reply = yield wire.wait(lambda el: el.name == "message")
        assert reply.getAttribute("type") == "error"      # not registered: the message handler answered
    finally:
        wire.stop()
