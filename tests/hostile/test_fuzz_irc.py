"""
Property-based: whatever bytes an IRC server sends, the line buffer, the line
and tag parser and the cleaning functions raise nothing, and what they hand on
is bounded and fit for XML (and, for names, for a JID).
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.words.protocols.jabber.xmpp_stringprep import resourceprep

from gateway.adapters.irc import text
from gateway.adapters.irc.client import MAX_LINE, IRCConnection, parse_line, safe_msgid, server_time

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

#: Bytes an attacker likes: delimiters, controls, invalid UTF-8, escapes.
_pieces = st.sampled_from([b"@", b":", b" ", b";", b"=", b"\\", b"\\s", b"\\:", b"\x01", b"\x00", b"\r", b"\n",
                           b"\xed\xa0\x80", b"\xef\xbf\xbe", b"\xff", b"\xc2\x85", b"PRIVMSG", b"#c", b"353",
                           b"msgid", b"time", b"2024-01-01T00:00:00Z"])
_raw = st.lists(st.one_of(_pieces, st.binary(max_size=8)), max_size=40).map(b"".join)


@given(_raw)
def test_parse_line_never_raises(raw: bytes):
    line = text.decode(raw, "latin-1")
    parsed = parse_line(line)
    if parsed is not None:
        tags, prefix, command, params = parsed
        assert command and " " not in command
        assert all(isinstance(p, str) for p in params)
        msgid = safe_msgid(tags)
        assert msgid is None or not _NOT_XML.search(msgid) and len(msgid) <= 128
        server_time(tags)


@given(st.text(max_size=300), st.integers(min_value=1, max_value=500))
def test_clean_is_xml_safe_and_bounded(value: str, limit: int):
    out = text.clean(value, limit)
    assert not _NOT_XML.search(out)
    assert len(out) <= limit


@given(st.text(max_size=200))
def test_clean_name_is_a_valid_resource(value: str):
    out = text.clean_name(value)
    assert out and len(out) <= text.NAME_LIMIT and not _NOT_XML.search(out)
    assert not any(ch.isspace() for ch in out)
    resourceprep.prepare(out)                   # raises if a JID could not hold it
    assert text.clean_name(value) == out       # stable: one nick, one occupant


class _Recorder(IRCConnection):
    """The real connection's dataReceived, with lineReceived recording instead of dispatching."""

    def __init__(self):                         # no session: only the line buffer is under test
        self._inbuf, self._skipping, self.overlong, self._lost = b"", False, 0, False
        self.transport = None
        self.lines: list[bytes] = []

    def lineReceived(self, line):
        self.lines.append(line)


@given(st.lists(st.one_of(_raw, st.just(b"A" * (MAX_LINE + 10)), st.just(b"\n")), max_size=30),
       st.integers(min_value=1, max_value=4096))
def test_line_buffer_is_bounded_and_loses_no_short_line(chunks: list[bytes], size: int):
    data = b"".join(chunks)
    conn = _Recorder()
    for i in range(0, len(data), size):
        conn.dataReceived(data[i:i + size])
        assert len(conn._inbuf) <= MAX_LINE
    assert all(len(line) <= MAX_LINE and b"\n" not in line and b"\r" not in line for line in conn.lines)
    # Every complete line that fits arrives, unless it followed an overlong one in the same stretch.
    if not conn.overlong:
        expected = [line.replace(b"\r", b"") for line in data.split(b"\n")[:-1]]
        assert conn.lines == expected
