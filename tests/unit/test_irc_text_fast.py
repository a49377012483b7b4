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
