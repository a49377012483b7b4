"""
The lean stream parser (gateway/xmpp/parser.py) against Twisted's own
(domish.ExpatElementStream): the same events with identical trees (names,
namespaces, default namespaces, prefixes, attributes in order, text, parents)
on random and hostile documents fed whole, in random pieces and split at every
byte; the same errors for malformed XML at the same piece; the same bounds on
stanza size and element count, and a bound on depth; and text in many pieces
costs linear time, not quadratic.
"""

from __future__ import annotations

import random
import time

import pytest
from twisted.words.xish import domish

from gateway.xmpp.parser import LeanElementStream

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
          b"xmlns:stream='http://etherx.jabber.org/streams' from='example.org' id='abc'>")


def tree(e):
    if isinstance(e, str):
        return ("text", e)
    for child in e.children:
        if not isinstance(child, str):
            assert child.parent is e
    return (type(e).__name__, e.name, e.uri, e.defaultUri, list(e.attributes.items()),
            sorted(e.localPrefixes.items()), [tree(c) for c in e.children])


def run(stream_class, pieces: list[bytes]):
    """Every event the stream gave, with the piece it came in, and how it ended."""
    stream = stream_class()
    events = []
    at = [0]
    stream.DocumentStartEvent = lambda root: events.append((at[0], "start", tree(root), root.parent))
    stream.ElementEvent = lambda e: events.append((at[0], "element", tree(e), e.parent, e.toXml()))
    stream.DocumentEndEvent = lambda: events.append((at[0], "end"))
    for n, piece in enumerate(pieces):
        at[0] = n
        try:
            stream.parse(piece)
        except domish.ParserError as e:
            events.append((n, "error", str(e)))
            break
    return events


def same(pieces: list[bytes]) -> None:
    old = run(domish.ExpatElementStream, pieces)
    new = run(LeanElementStream, pieces)
    assert new == old


def split_randomly(data: bytes, rng: random.Random) -> list[bytes]:
    pieces, at = [], 0
    while at < len(data):
        step = rng.choice([1, 2, 3, 7, 64, 1000, 9000])
        pieces.append(data[at:at + step])
        at += step
    return pieces


# -- documents ------------------------------------------------------------

NAMES = ["message", "body", "x", "a:b", "stream:features", "iq", "query", "item", "ns1:thing", "é", "_z-9.k"]
URIS = ["jabber:client", "urn:xmpp:ping", "", "http://jabber.org/protocol/muc#user", "urn:a b", "x&amp;y"]
TEXTS = ["hi", "", " ", "\n", "a\nb\r\nc\rd", "&amp;&lt;&gt;&quot;&apos;", "&#65;&#x10FFFF;&#x1F600;", "é漢字😀",
         "<![CDATA[ <not> &amp; a tag ]]>", "<!-- a comment -->", "<?pi data?>", "\t tab", "]]&gt;", "x" * 20000]
ATTR_VALUES = ["", "v", "a&amp;b", "&lt;&gt;", "'", "&quot;", "\u00e9", "line\nbreak", "&#9;&#10;&#13;", "y" * 70000]


def attr_text(rng, value):
    quote = rng.choice("'\"")
    value = value.replace(quote, "&apos;" if quote == "'" else "&quot;")
    return f"{quote}{value}{quote}"


def element(rng: random.Random, depth: int, prefixes: list[str]) -> str:
    name = rng.choice(NAMES)
    prefix = name.split(":")[0] if ":" in name else None
    attrs = []
    declared = list(prefixes)
    if prefix and prefix not in declared:
        attrs.append(f"xmlns:{prefix}={attr_text(rng, rng.choice(URIS[:2] + URIS[3:]) or 'urn:p')}")
        declared.append(prefix)
    if rng.random() < 0.3:
        attrs.append(f"xmlns={attr_text(rng, rng.choice(URIS))}")
    if rng.random() < 0.2:
        attrs.append(f"xmlns:q={attr_text(rng, 'urn:q')}")
        declared.append("q")
    used = set()
    for _ in range(rng.randrange(4)):
        key = rng.choice(["to", "from", "id", "type", "xml:lang", "q:attr", "a1", "é"])
        if key in used or (key.startswith("q:") and "q" not in declared):
            continue
        used.add(key)
        attrs.append(f"{key}={attr_text(rng, rng.choice(ATTR_VALUES))}")
    head = f"<{name}{''.join(' ' + a for a in attrs)}"
    if depth <= 0 or rng.random() < 0.25:
        return head + "/>"
    body = []
    for _ in range(rng.randrange(5)):
        if rng.random() < 0.5:
            body.append(rng.choice(TEXTS))
        else:
            body.append(element(rng, depth - 1, declared))
    return head + ">" + "".join(body) + f"</{name}>"


def document(rng: random.Random, stanzas: int = 4, depth: int = 4, close: bool = True) -> bytes:
    parts = [element(rng, depth, ["stream"]) + rng.choice(["", " ", "\n", "\r\n\t"]) for _ in range(stanzas)]
    tail = "</stream:stream>" if close else ""
    return HEADER + "".join(parts).encode() + tail.encode()


# -- identical trees --------------------------------------------------------

@pytest.mark.parametrize("seed", range(300))
def test_random_documents_give_identical_trees_whole_and_in_random_pieces(seed):
    rng = random.Random(seed)
    data = document(rng, stanzas=rng.randrange(1, 6), depth=rng.randrange(1, 6))
    same([data])
    same(split_randomly(data, rng))


@pytest.mark.parametrize("seed", range(12))
def test_split_at_every_byte_boundary(seed):
    rng = random.Random(1000 + seed)
    data = document(rng, stanzas=2, depth=3)
    if len(data) > 3000:
        data = HEADER + b"<message to='a@b' id='x'><body>h\xc3\xa9 &amp; &#x1F600;<![CDATA[<c>]]>"\
            b"</body><x xmlns='urn:x' xmlns:p='urn:p' p:k='v'/></message></stream:stream>"
    for cut in range(1, len(data)):
        same([data[:cut], data[cut:]])


def test_byte_by_byte():
    rng = random.Random(7)
    data = document(rng, stanzas=3, depth=4)
    same([data[i:i + 1] for i in range(len(data))])


HOSTILE = [
    # Prefixes and namespaces: redeclared, undeclared default, prefixed stanzas, attributes in namespaces.
    HEADER + b"<message xmlns=''><body xmlns='jabber:client'>x</body></message>",
    HEADER + b"<stream:message><body/></stream:message>",
    HEADER + b"<p:message xmlns:p='jabber:component:accept' xmlns:q='urn:q' q:a='1' b='2' q:c='3'>t</p:message>",
    HEADER + b"<message xmlns='urn:a'><x xmlns=''><y/></x></message>",
    HEADER + b"<message xmlns='urn:a' xmlns:a='urn:a'><a:x/></message>",
    HEADER + b"<message xmlns:xml='http://www.w3.org/XML/1998/namespace' xml:lang='en'/>",
    # Entities and character references, text around children, CDATA, comments, PIs.
    HEADER + b"<message>a<b/>&amp;<c>&#x1F600;</c><![CDATA[]]>z<!--c-->y<?p i?>x</message>",
    HEADER + b"<message>" + b"a\n" * 50000 + b"</message>",
    HEADER + b"<message>" + b"&amp;" * 30000 + b"</message>",
    # Huge attributes, many attributes.
    HEADER + b"<message id='" + b"i" * 500000 + b"'/>",
    HEADER + b"<message " + b" ".join(b"a%d='%d'" % (n, n) for n in range(3000)) + b"/>",
    # Deep nesting within the depth bound, wide stanzas.
    HEADER + b"<message>" + b"<x>" * 90 + b"t" + b"</x>" * 90 + b"</message>",
    HEADER + b"<message>" + b"<x/>" * 20000 + b"</message>",
    # A stream that ends, and whitespace and text between stanzas.
    HEADER + b" \n <message/> text at the root <iq/></stream:stream>",
    # Malformed: each must fail at the same point with the same message.
    HEADER + b"<message><body></message>",
    HEADER + b"<message a='1' a='2'/>",
    HEADER + b"<message><p:x/></message>",
    HEADER + b"<message>&undefined;</message>",
    HEADER + b"<message>\x00</message>",
    HEADER + b"<message>\xff\xfe</message>",
    HEADER + b"<message>&#0;</message>",
    HEADER + b"<message></message></stream:stream><extra/>",
    HEADER + b"<1message/>",
    b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>"
    b"<!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;'><!ENTITY d '&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;'>]>"
    b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'><m>&d;&d;&d;&d;&d;&d;&d;&d;</m>",
    b"\xef\xbb\xbf" + HEADER + b"<message/>",
    b"garbage",
    b"",
]


@pytest.mark.parametrize("n", range(len(HOSTILE)))
def test_hostile_documents(n):
    data = HOSTILE[n]
    same([data])
    same(split_randomly(data, random.Random(n)))


# -- bounds -------------------------------------------------------------

def test_the_stanza_size_bound_holds_as_the_bytes_arrive():
    small = type("Small", (LeanElementStream,), {"maxStanzaSize": 1000})
    small_old = type("SmallOld", (domish.ExpatElementStream,), {"maxStanzaSize": 1000})
    data = HEADER + b"<message><body>" + b"x" * 5000
    old = run(small_old, split_randomly(data, random.Random(1)))
    new = run(small, split_randomly(data, random.Random(1)))
    assert new == old
    assert new[-1][1:] == ("error", "Maximum stanza size exceeded")
    # The same bytes spread over stanzas are fine: the count starts again after each.
    many = HEADER + b"<message><body>xx</body></message>" * 200
    assert [e[1] for e in run(small, split_randomly(many, random.Random(2)))].count("element") == 200


def test_the_element_count_bound_holds():
    few = type("Few", (LeanElementStream,), {"maxElementCount": 50})
    few_old = type("FewOld", (domish.ExpatElementStream,), {"maxElementCount": 50})
    data = HEADER + b"<message>" + b"<x/>" * 60 + b"</message>"
    assert run(few, [data]) == run(few_old, [data])
    assert run(few, [data])[-1][1:] == ("error", "Maximum element count exceeded")


def test_nesting_deeper_than_the_bound_ends_the_stream():
    depth = LeanElementStream.maxDepth
    ok = HEADER + b"<message>" + b"<x>" * depth + b"</x>" * depth + b"</message>"
    assert [e[1] for e in run(LeanElementStream, [ok])] == ["start", "element"]
    deep = HEADER + b"<message>" + b"<x>" * (depth + 1) + b"</x>" * (depth + 1) + b"</message>"
    events = run(LeanElementStream, split_randomly(deep, random.Random(3)))
    assert events[-1][1:] == ("error", "Maximum element depth exceeded")
    assert "element" not in [e[1] for e in events]
    # The depth of one stanza does not carry over to the next.
    flat = HEADER + (b"<message>" + b"<x>" * depth + b"</x>" * depth + b"</message>") * 5
    assert [e[1] for e in run(LeanElementStream, [flat])].count("element") == 5


def test_text_in_many_pieces_costs_linear_time():
    # A stanza of short lines reaches the handlers piece by piece (expat reports every line end):
    # joined once, the cost grows with the size, not with its square.
    def cost(lines: int) -> float:
        data = HEADER + b"<message><body>" + b"a\n" * lines + b"</body></message>"
        pieces = [data[i:i + 4096] for i in range(0, len(data), 4096)]
        stream = LeanElementStream()
        got = []
        stream.DocumentStartEvent = lambda root: None
        stream.ElementEvent = got.append
        start = time.process_time()
        for piece in pieces:
            stream.parse(piece)
        used = time.process_time() - start
        assert str(got[0].body) == "a\n" * lines
        return used

    cost(1000)
    small, big = min(cost(40_000) for _ in range(5)), min(cost(320_000) for _ in range(5))
    assert big < small * 8 * 3, (small, big)


# -- the component stream uses it -----------------------------------------

def test_the_component_stream_parses_with_the_lean_parser():
    from twisted.words.protocols.jabber import xmlstream

    from gateway.xmpp.dispatch import RoutedXmlStream

    xs = RoutedXmlStream(xmlstream.Authenticator())
    xs._initializeStream()
    assert isinstance(xs.stream, LeanElementStream)
