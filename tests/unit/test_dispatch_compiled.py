"""
``dispatch.compile_query`` computes what Twisted's ``XPathQuery.matches`` does:
the same answer on random queries (names, ``*``, attribute and namespace
predicates with ``=``/``!=``, ``and``/``or``, up to four steps; the gateway's own
queries among them) against random and hostile elements (text children, the
same name in other namespaces, attributes missing, empty or with odd values),
and the queries it does not translate are left to Twisted.
"""

from __future__ import annotations

import random

from twisted.words.xish import domish, xpath

from gateway.xmpp.dispatch import StanzaRouter, compile_query

NAMES = ["message", "iq", "presence", "x", "invite", "query", "privilege", "ping", "body", "e"]
NAMESPACES = ["http://jabber.org/protocol/muc#user", "jabber:iq:register", "urn:xmpp:ping", "", "e.uri",
              "jabber:component:accept"]
ATTRS = ["type", "node", "id", "e", "xmlns"]
VALUES = ["get", "set", "error", "", "e.x", "a'b".replace("'", ""), "http://jabber.org/protocol/muc#traffic"]

#: The queries the gateway's handlers and wokkel register (and one with its name in a literal).
GATEWAY = [
    "/message/x[@xmlns='http://jabber.org/protocol/muc#user']/invite",
    "/message/privilege",
    "/iq[@type='get' or @type='set']/query[@xmlns='jabber:iq:register']",
    "/iq[@type='get']/ping[@xmlns='urn:xmpp:ping']",
    "/iq[@type='get']/query[@xmlns='http://jabber.org/protocol/disco#info'][@node='http://jabber.org/protocol/muc#traffic']",
    "/iq[@type='error']",
    "/iq/query[@xmlns='urn:xmpp:mam:2']",
    "/iq[@type='set']/command[@xmlns='http://jabber.org/protocol/commands']",
    "/iq[@type='e.x']/e[@e='e.uri']",
]


def _predicate(rng: random.Random) -> str:
    def one() -> str:
        return f"@{rng.choice(ATTRS)}{rng.choice(['=', '!='])}'{rng.choice(VALUES + NAMESPACES)}'"

    if rng.random() < 0.3:
        return f"[{one()} {rng.choice(['and', 'or'])} {one()}]"
    return f"[{one()}]"


def _query(rng: random.Random) -> str:
    steps = []
    for _ in range(rng.randint(1, 4)):
        step = "*" if rng.random() < 0.15 else rng.choice(NAMES)
        step += "".join(_predicate(rng) for _ in range(rng.choice([0, 0, 1, 1, 2])))
        steps.append("/" + step)
    return "".join(steps)


def _element(rng: random.Random, depth: int = 0) -> domish.Element:
    element = domish.Element((rng.choice(NAMESPACES), rng.choice(NAMES)))
    for attr in rng.sample(ATTRS[:-1], rng.randint(0, 3)):
        element[attr] = rng.choice(VALUES)
    for _ in range(rng.randint(0, 4 if depth < 3 else 0)):
        if rng.random() < 0.25:
            element.addContent(rng.choice(["text", " ", "e.x", "<&>"]))
        else:
            element.addChild(_element(rng, depth + 1))
    return element


def test_compiled_queries_answer_as_twisted_does():
    rng = random.Random(12)
    queries = GATEWAY + [_query(rng) for _ in range(600)]
    elements = [_element(rng) for _ in range(300)]
    # Elements the gateway's queries are about, so that matches are not rare.
    for query in GATEWAY:
        root = None
        parent = None
        for step in query.strip("/").split("/"):
            name = step.split("[")[0]
            child = domish.Element(("jabber:component:accept", name))
            if "xmlns='" in step:
                child = domish.Element((step.split("xmlns='")[1].split("'")[0], name))
            for attr in ("type", "node", "e"):
                if f"@{attr}='" in step:
                    child[attr] = step.split(f"@{attr}='")[1].split("'")[0]
            if parent is None:
                root = child
            else:
                parent.addContent("x")
                parent.addChild(child)
            parent = child
        elements.append(root)
    matched = compared = 0
    for source in queries:
        query = xpath.XPathQuery(source)
        match = compile_query(query)
        assert match is not None, source
        for element in elements:
            expected = bool(query.matches(element))
            assert bool(match(element)) is expected, (source, element.toXml())
            matched += expected
            compared += 1
    assert matched > 200, matched                 # the comparison is not only of misses


def test_what_is_not_translated_is_left_to_twisted():
    for source in ["//event/x", "/iq//query", "/message[text()='x']", "/message/body[1]",
                   "/a/b/c/d/e"]:
        try:
            query = xpath.XPathQuery(source)
        except Exception:
            continue
        assert compile_query(query) is None, source


def test_the_router_uses_the_compiled_matcher():
    router = StanzaRouter()
    seen = []
    router.addObserver("/message/x[@xmlns='http://jabber.org/protocol/muc#user']/invite", seen.append)
    router.addObserver("//event/x", seen.append)
    message = domish.Element(("jabber:component:accept", "message"))
    message.addElement(("http://jabber.org/protocol/muc#user", "x")).addElement("invite")
    calls = []

    def hook(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)

    import sys
    sys.setprofile(hook)
    try:
        router.dispatch(message)
    finally:
        sys.setprofile(None)
    assert seen == [message]
    assert "matchesPredicates" not in calls and "matches" not in calls, calls
