"""
The inbound listeners' fast paths give what the slow ones give (issue 11).

* Mail: parse() reads a plain mail without the email package's header objects
  (_parse_simple); whenever it answers, the answer equals _parse_full's, on
  random, hostile and plain-looking mail alike, and it does answer for the mail
  smtp-source and most clients send.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from gateway.adapters.email.parse import _parse_full, _parse_simple, parse
from tests.hostile.test_fuzz_mime import header_value, mails

RECEIVED = b"Received: from vm.test ([127.0.0.1]) by mail.test (xmpp-gateway); Thu, 03 Dec 2026 08:20:53 GMT\r\n"
SMTP_SOURCE = (RECEIVED + b"From: <bench@sender.test>\r\nTo: <bench@mail.test>\r\n"
               b"Date: Thu,  3 Dec 2026 08:20:53 +0000 (UTC)\r\nMessage-Id: <117b.0003.0000@vm.test>\r\n\r\n"
               b"La de da de da 1.\r\nLa de da de da 2.\r\nLa de da de da 3.\r\nLa de da de da 4.\r\n")


def same(raw: bytes) -> bool:
    """Whether the simple path took ``raw``; if it did, its answer must be the full parse's."""
    simple = _parse_simple(raw)
    if simple is not None:
        assert simple == _parse_full(raw), raw
    return simple is not None


def test_the_mail_smtp_source_sends_takes_the_simple_path():
    assert same(SMTP_SOURCE)
    mail = parse(SMTP_SOURCE)
    assert (mail.sender, mail.message_id, mail.text) == ("bench@sender.test", "<117b.0003.0000@vm.test>",
                                                         "La de da de da 1.\r\nLa de da de da 2.\r\n"
                                                         "La de da de da 3.\r\nLa de da de da 4.")


def test_common_shapes_take_the_simple_path():
    for head in (b"From: Alice Example <alice@example.net>\r\nSubject: hi  there\r\n",
                 b"From: bob@example.net\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 b"Content-Transfer-Encoding: 8bit\r\nIn-Reply-To: <a@b>\r\nReferences: <x@y> <a@b>\r\n",
                 b"From: <c@d.e>\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\nMIME-Version: 1.0\r\n"):
        assert same(RECEIVED + head + b"\r\nh\xc3\xa9llo\r\n")


def test_what_it_does_not_know_goes_the_full_way():
    for head in (b"From: =?utf-8?q?Al=C3=AFce?= <a@b.c>\r\n",          # an encoded word
                 b"Subject: folded\r\n over two lines\r\n",
                 b"From: \"Last, First\" <a@b.c>\r\n",
                 b"From: a@b.c\r\nFrom: d@e.f\r\n",
                 b"Content-Type: text/html\r\n",
                 b"Content-Type: text/plain; charset=koi8-r\r\n",
                 b"Content-Transfer-Encoding: base64\r\n",
                 b"Content-Disposition: attachment\r\n",
                 b"Subject: caf\xc3\xa9\r\n"):
        assert _parse_simple(RECEIVED + head + b"\r\nbody\r\n") is None, head


@settings(max_examples=400, deadline=None)
@given(mails())
def test_hostile_mime_gives_the_same_either_way(data):
    same(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_give_the_same_either_way(data):
    same(data)


_text = st.lists(st.sampled_from(list("aZ09 .@<>\"'(),;:\\=?-_\t") + ["\r\n ", "é"]), max_size=30).map("".join)
_addr = st.builds(lambda l, d: f"{l}@{d}", st.from_regex(r"[a-z0-9.+_-]{0,8}", fullmatch=True),
                  st.from_regex(r"[A-Za-z0-9.-]{0,10}", fullmatch=True))
_from = st.one_of(_addr, _addr.map(lambda a: f"<{a}>"),
                  st.builds(lambda n, a: f"{n} <{a}>", st.from_regex(r"[A-Za-z0-9 ]{0,12}", fullmatch=True), _addr),
                  _text, header_value)
_msgid = st.one_of(st.builds(lambda a: f"<{a}>", _addr), _text, header_value,
                   st.from_regex(r" ?<[a-z0-9.]{0,6}@[a-z0-9.]{0,6}> ?", fullmatch=True))
_ctype = st.one_of(st.sampled_from(["text/plain", "TEXT/Plain", "text/plain; charset=utf-8",
                                    'text/plain; charset="US-ASCII"', "text/plain;charset=utf-8 ", "text/plain; x=y",
                                    "text/plain; charset=latin-1", "text/html", "multipart/mixed; boundary=B",
                                    "text/plain; charset=\"utf-8"]), _text)
_cte = st.one_of(st.sampled_from(["7bit", "8BIT", " 8bit ", "base64", "quoted-printable", "binary"]), _text)


@st.composite
def plain_mails(draw) -> bytes:
    """Mails near the simple path's edge: the headers it reads, plain or not, in any order, some twice."""
    headers = draw(st.lists(st.one_of(
        st.tuples(st.just("From"), _from), st.tuples(st.just("Subject"), _text),
        st.tuples(st.sampled_from(["Message-ID", "Message-Id", "In-Reply-To", "References"]), _msgid),
        st.tuples(st.just("Content-Type"), _ctype), st.tuples(st.just("Content-Transfer-Encoding"), _cte),
        st.tuples(st.sampled_from(["To", "Date", "X-Other"]), _text)), max_size=7))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("utf-8")
    body = draw(st.one_of(st.binary(max_size=80), st.text(max_size=80).map(lambda t: t.encode("utf-8")),
                          st.just(b"line one\r\n.\r\nline two\r\n")))
    return RECEIVED + head + draw(st.sampled_from([b"\r\n", b"\n", b""])) + body


@settings(max_examples=1500, deadline=None)
@given(plain_mails())
def test_mails_near_the_edge_give_the_same_either_way(data):
    same(data)


def test_the_edge_strategy_does_reach_the_simple_path():
    taken = []

    @settings(max_examples=300, deadline=None, database=None)
    @given(plain_mails())
    def count(data):
        taken.append(same(data))

    count()
    assert sum(taken) > 30, sum(taken)


class _Factory:
    def connection_closed(self, proto):
        pass


def test_smtp_replies_end_in_crlf():
    """RFC 5321 4.2: every reply line ends in <CRLF> (the listener reads bare LF, but must not send it)."""
    from twisted.internet import error
    from twisted.internet.testing import StringTransport
    from twisted.python import failure

    from gateway.adapters.email.smtp_in import _ESMTP

    proto = _ESMTP()
    proto.host, proto.factory, proto.max_size = b"mail.test", _Factory(), 1000
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"EHLO client.test\r\nNOOP\r\n")
    data = transport.value()
    proto.connectionLost(failure.Failure(error.ConnectionDone()))
    lines = data.split(b"\n")[:-1]
    assert len(lines) >= 4 and data.endswith(b"\n"), data
    assert all(line.endswith(b"\r") for line in lines), data


# -- the web site's forms -------------------------------------------------------

class _Seen:
    """A leaf resource keeping its requests; it reads ``args`` only after the request ended, if at all."""

    isLeaf = True

    def __init__(self):
        self.requests = []

    def render(self, request):
        self.requests.append((request, request.content.read()))
        return b"ok"

    def getChildWithDefault(self, name, request):
        return self


def _args_from(site_class, content_type: bytes, body: bytes, query: bytes):
    from twisted.internet.testing import StringTransport
    from zope.interface import directlyProvides
    from twisted.web.resource import IResource

    seen = _Seen()
    directlyProvides(seen, IResource)
    site = site_class(seen)
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"POST /h?" + query + b" HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type
                         + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    if not seen.requests:
        return None
    request, content = seen.requests[0]
    return {k: list(v) for k, v in request.args.items()}, content


_form_bytes = st.lists(st.sampled_from([b"a", b"b", b"=", b"&", b"+", b"%", b"%20", b"%zz", b"%C3%A9", b"\xc3",
                                         b";", b"", b"x=1"]), max_size=20).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"application/x-www-form-urlencoded", b"Application/X-WWW-Form-Urlencoded; charset=utf-8",
                        b"text/plain", b"application/json", b"application/x-www-form-urlencoded ;a=b"]),
       _form_bytes, _form_bytes.filter(lambda q: b" " not in q and b"#" not in q))
def test_site_args_read_late_are_twisteds(content_type, body, query):
    """LimitedSite parses a urlencoded body into ``args`` when they are read; they equal Twisted's own Site's."""
    from twisted.web import server

    from gateway.web.limits import LimitedSite

    assert _args_from(LimitedSite, content_type, body, query) == _args_from(server.Site, content_type, body, query)


# -- the plain split (_split_plain): what compat32's parser gives, or None ------------------------

def _compat32(raw: bytes):
    import email
    import email.policy
    mail = email.message_from_bytes(raw, policy=email.policy.compat32)
    headers: dict[str, list[str]] = {}
    for name, value in mail.items():
        headers.setdefault(name.lower(), []).append(value)
    return headers, mail.get_payload(decode=True) or b"", mail.is_multipart()


def split_same(raw: bytes) -> bool:
    """Whether the plain split took ``raw``; if it did, the parser's headers and (7/8-bit) body."""
    from gateway.adapters.email.parse import _split_plain
    split = _split_plain(raw)
    if split is None:
        return False
    headers, body = split
    want_headers, want_body, multipart = _compat32(raw)
    assert headers == want_headers, raw
    # The body is what _parse_simple reads when it goes on: a text/plain (or untyped), 7/8-bit mail.
    from gateway.adapters.email.parse import _SIMPLE_CTE, _SIMPLE_TYPE
    ctype = headers.get("content-type")
    cte = headers.get("content-transfer-encoding")
    if (ctype is None or (len(ctype) == 1 and _SIMPLE_TYPE.fullmatch(ctype[0]))) and \
            (cte is None or (len(cte) == 1 and _SIMPLE_CTE.fullmatch(cte[0]))):
        assert not multipart, raw
        assert (body or b"") == want_body, raw
    return True


_HEAD_PIECES = st.one_of(st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n ", b"\r\n\t", b":", b": ", b"From ",
                                          b"Subject", b"X-A", b" ", b"\t", b"\xc3\xa9", b"\x00", b"=?utf-8?q?x?=",
                                          b"\r\n\r\n", b"a:b", b"Content-Type: multipart/mixed; boundary=B"]),
                         st.binary(max_size=5))


@settings(max_examples=1500, deadline=None)
@given(st.lists(_HEAD_PIECES, max_size=30).map(b"".join))
def test_the_plain_split_reads_a_head_as_the_parser_does(raw):
    split_same(raw)


_NAME = st.one_of(st.sampled_from([b"From", b"from", b"FROM ", b"Subject", b"Content-Type", b"X", b"", b"From x",
                                   b"a\x80b", b"Content-Transfer-Encoding", b"~!#"]),
                  st.from_regex(rb"[!-9;-~]{1,8}", fullmatch=True))
_VALUE = st.one_of(st.from_regex(rb"[ -~]{0,20}", fullmatch=True),
                   st.sampled_from([b" ", b"  x  ", b"\t x", b"x\r", b"caf\xc3\xa9", b"text/plain", b" 8bit",
                                    b"multipart/mixed; boundary=B", b"<a@b>"]))
_LINE = st.builds(lambda n, sep, v: n + sep + v, _NAME, st.sampled_from([b":", b": ", b":  ", b" :", b""]), _VALUE)
_EOL = st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b"\r\n ", b"\r\n\t"])


@st.composite
def heads(draw) -> bytes:
    """Header blocks mostly as the split takes them, with the odd line or line end that it must refuse."""
    lines = draw(st.lists(st.tuples(_LINE, _EOL), max_size=8))
    head = b"".join(line + eol for line, eol in lines)
    return head + draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b""])) + draw(st.binary(max_size=60))


@settings(max_examples=1500, deadline=None)
@given(heads())
def test_the_plain_split_reads_built_heads_as_the_parser_does(raw):
    split_same(raw)


def test_the_built_heads_do_reach_the_split():
    taken = []

    @settings(max_examples=300, deadline=None, database=None)
    @given(heads())
    def count(data):
        taken.append(split_same(data))

    count()
    assert sum(taken) > 15, sum(taken)


@settings(max_examples=800, deadline=None)
@given(st.one_of(plain_mails(), mails(), st.binary(max_size=300)))
def test_the_plain_split_on_mails_reads_them_as_the_parser_does(raw):
    split_same(raw)


def test_the_plain_split_does_take_plain_mails():
    assert split_same(SMTP_SOURCE)
    taken = []

    @settings(max_examples=300, deadline=None, database=None)
    @given(plain_mails())
    def count(data):
        taken.append(split_same(data))

    count()
    assert sum(taken) > 30, sum(taken)


def test_smtp_sources_mail_is_read_in_few_calls():
    """Before: compat32's feed parser, line by line, about 200 Python calls for this mail; now a split."""
    import sys
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event == "call":
            count += 1
    sys.setprofile(profile)
    try:
        mail = parse(SMTP_SOURCE)
    finally:
        sys.setprofile(None)
    assert mail.sender == "bench@sender.test" and mail.text.startswith("La de da")
    assert count <= 25, count
