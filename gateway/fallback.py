"""
The words a network without corrections, replies or reactions gets instead:
plain text any reader understands. Shared by the bridge (for adapters that do
not declare ICorrections, IReplies or IReactions) and by adapters whose
ability depends on the connection (IRC without message-tags). Nothing here
knows XML or a foreign protocol.
"""

from __future__ import annotations

import difflib

#: Characters of the message referred to that a fallback quotes.
QUOTE_LIMIT = 40
#: The longest old or new words a short edit (``s/old/new/``) names.
EDIT_LIMIT = 40


def one_line(text: str | None) -> str:
    """Whitespace (newlines included) collapsed to single spaces."""
    return " ".join((text or "").split())


def quote(text: str | None, limit: int = QUOTE_LIMIT) -> str:
    """A short one-line quote of ``text``, cut with an ellipsis."""
    line = one_line(text)
    return line if len(line) <= limit else line[:limit - 1].rstrip() + "…"


def reaction_text(reactions: list[str], quoted: str | None) -> str:
    """``Reacted ❤ to “…”`` (or just ``Reacted ❤`` when the text reacted to is not known)."""
    said = " ".join(reactions)
    return f"Reacted {said} to “{quote(quoted)}”" if quoted else f"Reacted {said}"


def reply_text(body: str, quoted: str | None) -> str:
    """The reply with the message answered as a quoted first line (``> …``)."""
    return f"> {quote(quoted)}\n{body}" if quoted else body


def correction_text(body: str) -> str:
    """A correction sent as a new message, saying so."""
    return f"Correction: {body}"


def short_edit(old: str | None, new: str) -> str | None:
    """
    ``s/old words/new words/`` when ``new`` differs from ``old`` in one run of
    words that had words before (a replacement, not an addition) and both are
    short and free of ``/``; else None (the whole corrected text is sent).
    """
    if not old:
        return None
    a, b = old.split(), new.split()
    if abs(len(a) - len(b)) > EDIT_LIMIT // 2:
        # No short edit adds or takes that many words; and the diff below is quadratic in the
        # words, which a long correction would make the reactor pay for.
        return None
    changes = [op for op in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes() if op[0] != "equal"]
    if len(changes) != 1:
        return None
    _, i1, i2, j1, j2 = changes[0]
    before, after = " ".join(a[i1:i2]), " ".join(b[j1:j2])
    if not before or len(before) > EDIT_LIMIT or len(after) > EDIT_LIMIT or "/" in before + after:
        return None
    if " ".join(a).count(before) != 1:
        return None                      # s/// replaces the first match: it must be the only one
    return f"s/{before}/{after}/"
