"""
IRC text rules: one line per PRIVMSG within the 512-byte limit (split on UTF-8
character boundaries), no CR, LF or NUL from XMPP ever reaching the wire (so no
text can become a second command), mIRC formatting codes stripped from what
comes in, and a fallback charset for servers that are not UTF-8.

What comes in is written by a server we do not control. Every string from it
that reaches XMPP (nicks, channel names, topics, reasons, bodies, notices,
error texts) passes :func:`clean` or :func:`clean_name` at the adapter's
boundary: one character rule for all of them, so no field is the one that was
forgotten. A character XML 1.0 forbids would make the XMPP server close the
component stream for every user; a character a JID cannot hold would make it
bounce the stanza, so the user would silently miss an occupant or a message.
"""

from __future__ import annotations

import functools
import re
import stringprep
import unicodedata

from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep, resourceprep

_FORMATTING = re.compile(r"\x03(?:\d{1,2}(?:,\d{1,2})?)?|\x04(?:[0-9a-fA-F]{6}(?:,[0-9a-fA-F]{6})?)?"
                         r"|[\x02\x0f\x11\x16\x1d\x1e\x1f]")
_BREAKS = re.compile(r"[\r\n\x00]+")

#: What a server adds when relaying our line to others: ":nick!user@host " (host up to 63).
RELAY_OVERHEAD = 1 + 30 + 1 + 10 + 1 + 63 + 1
LINE_LIMIT = 512


#: Characters never passed on: those XML 1.0 forbids (C0 controls but tab and
#: newline, surrogates, U+FFFE/U+FFFF), DEL and C1 controls (what a latin-1
#: fallback makes of stray bytes), and the Unicode noncharacters U+FDD0-U+FDEF.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")

#: Bounds on what one field may carry into a stanza, in characters. An IRC line
#: is at most 8,703 bytes here (client.MAX_LINE), so these cut only the absurd.
TEXT_LIMIT = 4096
NAME_LIMIT = 128
#: What an empty name (every character was unfit) becomes.
EMPTY_NAME = "_"
#: What marks a NOTICE's text in the room.
NOTICE_MARK = "[notice] "


def clean(value: str | None, limit: int = TEXT_LIMIT) -> str:
    """
    Text from the server, fit for a stanza: mIRC formatting and every character
    in ``_UNSAFE`` removed, at most ``limit`` characters (an ellipsis marks the cut).
    """
    if not value:
        return ""
    value = _UNSAFE.sub("", _FORMATTING.sub("", value))
    if len(value) > limit:
        value = value[:limit - 1] + "\u2026"
    return value


def _prohibited(ch: str) -> bool:
    """What resourceprep and nodeprep both refuse (RFC 3920 appendix B/C), and what nodeprep maps to nothing."""
    return (stringprep.in_table_a1(ch) or stringprep.in_table_b1(ch) or stringprep.in_table_c12(ch)
            or stringprep.in_table_c21_c22(ch) or stringprep.in_table_c3(ch) or stringprep.in_table_c4(ch)
            or stringprep.in_table_c5(ch) or stringprep.in_table_c6(ch) or stringprep.in_table_c7(ch)
            or stringprep.in_table_c8(ch) or stringprep.in_table_c9(ch))


def clean_name(value: str | None, limit: int = NAME_LIMIT) -> str:
    """
    A nick or channel name from the server that can be a JID resource (an
    occupant's nick) or, after XEP-0106 escaping, a localpart: :func:`clean`,
    then no whitespace and nothing stringprep prohibits; right-to-left letters
    are dropped when they break the bidi rule. Never empty. The same name always
    gives the same result, so events about one IRC nick stay about one occupant.

    Called for every room event, so the usual case is cheap: an ASCII name
    (after :func:`clean`, no control character is left) only loses its
    whitespace, which is all stringprep would take from it (no ASCII printable
    is prohibited, none is right-to-left, and the XEP-0106 characters are
    escaped later); other names go through stringprep once and are remembered
    (at most ``NAME_CACHE``, each at most ``limit`` characters).
    """
    value = clean(value, limit)
    if value.isascii():
        return "".join(value.split()) or EMPTY_NAME
    return _prepared_name(value)


#: Names outside ASCII remembered with what stringprep made of them (an LRU: a peer inventing
#: names only evicts; each key is at most NAME_LIMIT characters for the callers here).
NAME_CACHE = 1024


@functools.lru_cache(maxsize=NAME_CACHE)
def _prepared_name(value: str) -> str:
    """The stringprep rules of :func:`clean_name` for an already :func:`clean` value."""
    value = "".join(ch for ch in value if not ch.isspace() and not _prohibited(ch)) or EMPTY_NAME
    for attempt in (value, _drop_rtl(value)):
        try:
            resourceprep.prepare(attempt)
            nodeprep.prepare(_without_escaped(attempt))
        except UnicodeError:
            continue
        return attempt
    return "".join(ch for ch in value if ch.isascii()) or EMPTY_NAME


def _drop_rtl(value: str) -> str:
    return "".join(ch for ch in value if unicodedata.bidirectional(ch) not in ("R", "AL")) or EMPTY_NAME


def _without_escaped(value: str) -> str:
    """The characters XEP-0106 escapes are nodeprep-prohibited only until escaped: leave them out of the check."""
    return "".join(ch for ch in value if ch not in " \"&'/:<>@") or EMPTY_NAME


def strip_formatting(text: str) -> str:
    return _FORMATTING.sub("", text)


def one_line(text: str) -> str:
    """For single-line values (nicks, topics, kick reasons): CR, LF and NUL become spaces."""
    return _BREAKS.sub(" ", text or "").strip()


def decode(line: bytes, fallback: str) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode(fallback, "replace")


def split_utf8(text: str, limit: int) -> list[str]:
    """Chunks of at most ``limit`` bytes in UTF-8, never splitting a character."""
    if text and len(text.encode("utf-8")) <= limit:
        return [text]                              # the usual line: one chunk, no walk over its characters
    chunks, current, size = [], [], 0
    for ch in text:
        n = len(ch.encode("utf-8"))
        if size + n > limit and current:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(ch)
        size += n
    if current:
        chunks.append("".join(current))
    return chunks


def message_lines(command: str, target: str, body: str, nick: str = "", ctcp: str | None = None) -> list[str]:
    """
    The IRC lines carrying ``body``: one command per line of the body (empty lines
    dropped), each short enough that the server can relay it within 512 bytes.
    """
    if not ctcp and "\n" not in body and "\r" not in body and "\x00" not in body and not body.isspace() and body:
        # The usual message: one line, no CTCP, short enough: the line itself, with no split or walk
        # (the budget below is at least what this leaves; tests/unit/test_irc_send_fast.py compares).
        line = f"{command} {target} :{body}"
        if len(line.encode()) <= LINE_LIMIT - 2 - RELAY_OVERHEAD:
            return [line]
    prefix = f"{command} {target} :"
    wrap = (f"\x01{ctcp} ", "\x01") if ctcp else ("", "")
    budget = LINE_LIMIT - 2 - len(prefix.encode()) - RELAY_OVERHEAD - len(wrap[0]) - len(wrap[1])
    budget = max(budget, 32)
    lines = []
    for raw in body.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        raw = raw.replace("\x00", "")
        if not raw.strip():
            continue
        for chunk in split_utf8(raw, budget):
            lines.append(f"{prefix}{wrap[0]}{chunk}{wrap[1]}")
    return lines


#: The user part of ``nick!user@host`` as servers show it (``~`` when no ident answered, and the
#: few punctuation marks ident and cloaks use), and the host: a name, an IPv4 or IPv6 address, or
#: a cloak (``user/alice``, ``gateway/web/x-abc``). ASCII only, no space, no @ or !, nothing
#: XML-special: the pair becomes ``user@host``, a JID resource, as sent.
_IDENT = re.compile(r"[A-Za-z0-9~._\-\[\]\\`^{}|+=]{1,64}", re.ASCII)
_HOSTNAME = re.compile(r"[A-Za-z0-9._:/\-]{1,253}", re.ASCII)


def userhost(user: str | None, host: str | None) -> tuple[str, str] | None:
    """(user, host) of an occupant if both are fit to show (see _IDENT, _HOSTNAME), else None."""
    if user and host and _IDENT.fullmatch(user) and _HOSTNAME.fullmatch(host):
        return user, host
    return None


def split_prefix(prefix: str) -> tuple[str, tuple[str, str] | None]:
    """``nick!user@host`` as (nick, (user, host) or None when absent or unfit)."""
    nick, bang, rest = prefix.partition("!")
    if not bang:
        return nick, None
    user, at, host = rest.partition("@")
    return nick, userhost(user, host) if at else None
