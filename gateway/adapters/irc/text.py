"""
IRC text rules: one line per PRIVMSG within the 512-byte limit (split on UTF-8
character boundaries), no CR, LF or NUL from XMPP ever reaching the wire (so no
text can become a second command), mIRC formatting codes stripped from what
comes in, and a fallback charset for servers that are not UTF-8.
"""

from __future__ import annotations

import re

_FORMATTING = re.compile(r"\x03(?:\d{1,2}(?:,\d{1,2})?)?|\x04(?:[0-9a-fA-F]{6}(?:,[0-9a-fA-F]{6})?)?"
                         r"|[\x02\x0f\x11\x16\x1d\x1e\x1f]")
_BREAKS = re.compile(r"[\r\n\x00]+")

#: What a server adds when relaying our line to others: ":nick!user@host " (host up to 63).
RELAY_OVERHEAD = 1 + 30 + 1 + 10 + 1 + 63 + 1
LINE_LIMIT = 512


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
