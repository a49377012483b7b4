"""
The fast paths of gateway/adapters/irc/text.py give exactly what the full rules give:
the ASCII path of clean_name against the stringprep path, the cache bounded.
"""

from __future__ import annotations

import random
import string

from gateway.adapters.irc import text


def test_every_ascii_name_is_cleaned_as_the_stringprep_path_cleans_it():
    rng = random.Random(12)
    alphabet = [chr(c) for c in range(128)]
    samples = [chr(c) for c in range(128)] + ["", " ", "\t\n", "a b", "\x03" + "12,4nick", "a\x00b", "x" * 300]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(3000)]
    samples += ["".join(rng.choice(string.printable) for _ in range(rng.randint(1, 140))) for _ in range(500)]
    for value in samples:
        cleaned = text.clean(value, text.NAME_LIMIT)
        expected = text._prepared_name(cleaned) if cleaned.isascii() else None
        if expected is not None:
            assert text.clean_name(value) == expected, repr(value)


def test_names_outside_ascii_still_go_through_stringprep_and_the_cache_is_bounded():
    text._prepared_name.cache_clear()
    assert text.clean_name("caf\u00e9") == "caf\u00e9"
    assert text.clean_name("a\u00adb\u200bc") == "abc"                      # mapped to nothing / prohibited
    assert text.clean_name("\u05d0x1") == text.clean_name("\u05d0x1")      # the bidi rule: stable answer
    assert text.clean_name("\ufdd0\u2028") == text.EMPTY_NAME
    for i in range(text.NAME_CACHE * 2):
        text.clean_name(f"n\u00e9{i}")
    assert text._prepared_name.cache_info().currsize <= text.NAME_CACHE
    assert text.clean_name("\u00e9" * 1000) == "\u00e9" * (text.NAME_LIMIT - 1) + "\u2026"   # cut, as before


def _split_by_characters(value: str, limit: int) -> list[str]:
    """The character walk split_utf8 does for long text, as the reference."""
    chunks, current, size = [], [], 0
    for ch in value:
        n = len(ch.encode("utf-8"))
        if size + n > limit and current:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(ch)
        size += n
    if current:
        chunks.append("".join(current))
    return chunks


def test_split_utf8_gives_what_the_character_walk_gives():
    rng = random.Random(3)
    alphabet = ["a", " ", "\u00e9", "\u20ac", "\U0001F600", "\u05d0"]
    for _ in range(3000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        limit = rng.choice([1, 3, 4, 5, 32, 100, 400])
        assert text.split_utf8(value, limit) == _split_by_characters(value, limit), (value, limit)
    assert text.split_utf8("", 10) == []
    assert text.split_utf8("abc", 3) == ["abc"] and text.split_utf8("abcd", 3) == ["abc", "d"]


def test_escape_and_unescape_fast_paths_match_the_character_walk():
    from gateway.xmpp import escaping

    def walk_escape(value):
        if value[0] == " " or value[-1] == " ":
            raise escaping.EscapingError("a JID localpart cannot begin or end with a space (XEP-0106 §4.2)")
        out = []
        for i, ch in enumerate(value):
            if ch == "\\":
                out.append("\\5c" if escaping._is_sequence(value, i) else "\\")
            else:
                out.append(escaping.ESCAPES.get(ch, ch))
        return escaping.check_localpart("".join(out))

    def walk_unescape(value):
        out, i = [], 0
        while i < len(value):
            if value[i] == "\\" and escaping._is_sequence(value, i):
                out.append(escaping._UNESCAPES[value[i + 1:i + 3].lower()])
                i += 3
            else:
                out.append(value[i])
                i += 1
        return "".join(out)

    def outcome(f, value):
        try:
            return f(value)
        except escaping.EscapingError as e:
            return ("error", str(e))

    rng = random.Random(8)
    alphabet = list("ab#%.-_") + list(escaping.ESCAPES) + ["2", "0", "5c", "\u00e9", "\u0000", "\ufdd0"]
    for _ in range(5000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        assert outcome(escaping.escape, value) == outcome(walk_escape, value), repr(value)
        assert escaping.unescape(value) == walk_unescape(value), repr(value)
