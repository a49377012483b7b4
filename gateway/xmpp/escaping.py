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

XEP-0106 escapes only those ten characters, so a foreign address may still
hold characters no JID can (RFC 3920 nodeprep prohibits controls such as TAB,
non-ASCII spaces such as NBSP or U+3000, format characters such as U+200E,
private-use code points, and mixed-direction text; RFC 7622 caps a localpart
at 1023 bytes). Escaped as is, the XMPP server would bounce the stanza after
the gateway counted it as delivered, so ``escape`` checks its result with
nodeprep and refuses what would not be a JID. In the other direction,
``address_of`` refuses a localpart that is not what ``escape`` makes of its
own unescaping (``\\20`` first or last, ``\\5c`` before a non-sequence):
two JIDs must never name one foreign address.
"""

from __future__ import annotations

import functools
import re

from twisted.words.protocols.jabber.xmpp_stringprep import Profile, nodeprep

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
#: Any character escape() changes (the ten, backslash among them): without one, the text is its own escape.
_ESCAPED = re.compile("[" + re.escape("".join(ESCAPES)) + "]")

#: Service discovery feature for XEP-0106 (the spec's own short name).
FEATURE = "jid\\20escaping"


#: Longest localpart in UTF-8 bytes (RFC 7622 §3.3).
MAX_LOCALPART = 1023

#: Nodeprep as servers apply it to stanzas they route (Prosody, through
#: libidn): code points unassigned in Unicode 3.2 (newer letters, emoji) pass,
#: everything RFC 3920 prohibits does not.
_NODEPREP = Profile(mappings=nodeprep.mappings, prohibiteds=nodeprep.prohibiteds, check_unassigneds=False)

#: Nodeprep's prohibitions among ASCII characters, once the ten are escaped.
_ASCII_PROHIBITED = re.compile("[\x00-\x1f\x7f]")


class EscapingError(ValueError):
    """The string cannot be a JID localpart under XEP-0106."""


def check_localpart(localpart: str) -> str:
    """``localpart`` if it is a valid JID localpart (nodeprep, length); EscapingError otherwise."""
    if localpart.isascii():
        # The fast path (nearly every address): nodeprep only folds case here.
        bad = _ASCII_PROHIBITED.search(localpart)
        if bad:
            raise EscapingError(f"a JID cannot hold the control character U+{ord(bad.group()):04X}")
        if len(localpart) > MAX_LOCALPART:
            raise EscapingError(f"the address is longer than a JID localpart may be ({MAX_LOCALPART} bytes)")
        return localpart
    return _check_unicode(localpart)


@functools.lru_cache(maxsize=4096)
def _check_unicode(localpart: str) -> str:
    try:
        prepared = _NODEPREP.prepare(localpart)
    except UnicodeError as e:
        raise EscapingError(f"a JID cannot hold this address (nodeprep: {e})") from None
    if not prepared:
        raise EscapingError("the address is empty once prepared as a JID")
    if len(prepared.encode("utf-8")) > MAX_LOCALPART:
        raise EscapingError(f"the address is longer than a JID localpart may be ({MAX_LOCALPART} bytes)")
    return localpart


def _is_sequence(text: str, i: int) -> bool:
    """True when ``text[i:i+3]`` is one of the ten escape sequences."""
    return text[i] == "\\" and text[i + 1 : i + 3].lower() in _UNESCAPES


#: Answers kept per cache: every message asks for its contact's JID, and a
#: gateway talks to far fewer contacts at a time than this.
CACHE_ENTRIES = 4096
#: Longer addresses are answered and not kept: the caches' memory stays at
#: CACHE_ENTRIES short strings whatever a hostile peer sends.
CACHE_MAX_LENGTH = 256


class _Answers(dict):
    """
    A bounded cache of a function's answers, errors included (as their text,
    raised anew as a fresh EscapingError on a hit, so no traceback is kept or
    chained). Full, it forgets its oldest entry: insertion order, no bookkeeping
    per hit, and a flood of new keys only pushes old ones out.
    """

    __slots__ = ()

    def keep(self, key: str, answer: str | EscapingError) -> None:
        if len(key) > CACHE_MAX_LENGTH:
            return
        if len(self) >= CACHE_ENTRIES:
            del self[next(iter(self))]
        self[key] = answer.args[0] if isinstance(answer, EscapingError) else (answer,)


_escaped = _Answers()
_addresses = _Answers()


def clear_caches() -> None:
    _escaped.clear()
    _addresses.clear()


def cache_sizes() -> int:
    return len(_escaped) + len(_addresses)


def escape(text: str) -> str:
    """The XEP-0106 localpart for ``text``; EscapingError when no JID can hold it."""
    known = _escaped.get(text)
    if known is not None:
        if type(known) is tuple:
            return known[0]
        raise EscapingError(known)
    try:
        answer = _escape(text)
    except EscapingError as e:
        _escaped.keep(text, e)
        raise
    _escaped.keep(text, answer)
    return answer


def _escape(text: str) -> str:
    if not text:
        raise EscapingError("an empty address cannot be a JID localpart")
    if text[0] == " " or text[-1] == " ":
        raise EscapingError("a JID localpart cannot begin or end with a space (XEP-0106 §4.2)")
    if _ESCAPED.search(text) is None:
        return check_localpart(text)               # the usual address: nothing to escape, no walk
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\5c" if _is_sequence(text, i) else "\\")
        else:
            out.append(ESCAPES.get(ch, ch))
    return check_localpart("".join(out))


def address_of(localpart: str) -> str:
    """
    The foreign address a JID's localpart names; EscapingError when the
    localpart is not the canonical escaping of any address.
    """
    known = _addresses.get(localpart)
    if known is not None:
        if type(known) is tuple:
            return known[0]
        raise EscapingError(known)
    try:
        answer = _address_of(localpart)
    except EscapingError as e:
        _addresses.keep(localpart, e)
        raise
    _addresses.keep(localpart, answer)
    return answer


def _address_of(localpart: str) -> str:
    address = unescape(localpart)
    if escape(address).lower() != localpart.lower():
        raise EscapingError(f"{localpart!r} is not a valid XEP-0106 escaped address "
                            f"(it would be written {escape(address)!r})")
    return address


def unescape(text: str) -> str:
    if "\\" not in text:
        return text                                # no sequence can start: nothing to undo
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
