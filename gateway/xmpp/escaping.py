"""
XEP-0106 JID escaping: how a foreign address becomes the localpart of a JID.

The bridge addresses every foreign contact as ``escape(address)@component``,
so ``alice@example.net`` becomes ``alice\\40example.net@mail.example.org``.
The rules follow XEP-0106 §4 exactly:

* the ten characters below are replaced by ``\\`` and two lowercase hex digits;
* a backslash is escaped (``\\5c``) only when it is followed by two characters
  that would otherwise read as an escape sequence, so ``c:\\net`` keeps its
  backslash as is;
* a localpart may not begin or end with a space (``\\20``): such input is
  refused rather than silently trimmed, because trimming would map two
  different foreign addresses to one JID;
* unescaping recognises exactly the ten sequences; anything else after a
  backslash is left alone.
"""

from __future__ import annotations

ESCAPES: dict[str, str] = {
    " ": "\\20",
    '"': "\\22",
    "&": "\\26",
    "'": "\\27",
    "/": "\\2f",
    ":": "\\3a",
    "<": "\\3c",
    ">": "\\3e",
    "@": "\\40",
    "\\": "\\5c",
}
_UNESCAPES: dict[str, str] = {seq[1:]: ch for ch, seq in ESCAPES.items()}

#: Service discovery feature for XEP-0106 (the spec's own short name).
FEATURE = "jid\\20escaping"


class EscapingError(ValueError):
    """The string cannot be a JID localpart under XEP-0106."""


def _is_sequence(text: str, i: int) -> bool:
    """True when ``text[i:i+3]`` is one of the ten escape sequences."""
    return text[i] == "\\" and text[i + 1 : i + 3].lower() in _UNESCAPES


def escape(text: str) -> str:
    if not text:
        raise EscapingError("an empty address cannot be a JID localpart")
    if text[0] == " " or text[-1] == " ":
        raise EscapingError("a JID localpart cannot begin or end with a space (XEP-0106 §4.2)")
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\5c" if _is_sequence(text, i) else "\\")
        else:
            out.append(ESCAPES.get(ch, ch))
    return "".join(out)


def unescape(text: str) -> str:
    out = []
    i = 0
    n = len(text)
    while i < n:
        if text[i] == "\\" and _is_sequence(text, i):
            out.append(_UNESCAPES[text[i + 1 : i + 3].lower()])
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
