"""
escape() and address_of() run for every message (the contact's JID each way),
so their answers are kept in bounded caches. A cache must not change an answer
(errors included, and a hit must give what a miss would) and must not grow
without end when a hostile peer sends an endless stream of new addresses.
"""

import sys
import tracemalloc

import pytest
from hypothesis import given, settings, strategies as st

from gateway.xmpp import escaping
from gateway.xmpp.escaping import EscapingError, address_of, escape

HOSTILE = ["alice@example.net", "c:\\net", "c:\\5commas", "\\5c5c", " lead", "trail ", "", "a\x00b", "x\ty",
           "\u200e", "\u00a0nbsp", "\ue000", "ﬀ", "ǅ", "A" * 1023, "A" * 1024, "é" * 600, "\\20x", "x\\20",
           "\\5cg", "\\5C20", "ALICE\\40example.net", "alice\\40EXAMPLE.net", "\\40", "\\zz", "\\", "#c%s",
           "\U0001f600", "a" * 5000]


def outcome(fn, text):
    try:
        return ("ok", fn(text))
    except EscapingError as e:
        return ("error", str(e))


def fresh(fn, text):
    escaping.clear_caches()
    return outcome(fn, text)


@pytest.mark.parametrize("text", HOSTILE)
@pytest.mark.parametrize("fn", [escape, address_of])
def test_a_hit_gives_what_a_miss_gives(fn, text):
    first = fresh(fn, text)
    assert outcome(fn, text) == first            # from the cache now
    assert outcome(fn, text) == first


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list(" \"&'/:<>@\\\\520cCaAé\x00\u200e")) | st.characters(),
                        max_size=12), min_size=1, max_size=30))
def test_random_sequences_give_the_same_answers_as_without_a_cache(texts):
    expected = {}
    for fn in (escape, address_of):
        for text in texts:
            expected[fn, text] = fresh(fn, text)
    escaping.clear_caches()
    for _ in range(2):
        for fn in (escape, address_of):
            for text in texts:
                assert outcome(fn, text) == expected[fn, text], (fn.__name__, text)


def test_an_error_from_the_cache_is_a_fresh_exception():
    escaping.clear_caches()
    errors = []
    for _ in range(3):
        with pytest.raises(EscapingError) as caught:
            escape("a\x00b")
        errors.append(caught.value)
    assert len({id(e) for e in errors}) == 3
    assert all(e.__context__ is None and e.__cause__ is None for e in errors)


def test_a_cached_address_costs_one_call():
    # The point of the cache: a repeat is looked up, not walked again (escape, then
    # check_localpart, then the regular expressions, each time before).
    escape("c7")
    address_of("c7")
    calls = []

    def count(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)

    sys.setprofile(count)
    try:
        escape("c7")
        address_of("c7")
    finally:
        sys.setprofile(None)
    assert calls == ["escape", "address_of"]


def test_distinct_hostile_addresses_do_not_grow_the_caches_without_end():
    escaping.clear_caches()
    tracemalloc.start()
    try:
        escape("warm"); address_of("warm")
        before = tracemalloc.get_traced_memory()[0]
        for n in range(60_000):
            text = f"{n:x}" * 40              # long and all different
            escape(text)
            address_of(text)
            outcome(escape, f" {n}")        # errors too
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert escaping.cache_sizes() <= 2 * escaping.CACHE_ENTRIES
    # 60,000 × 3 answers of ~200 bytes and more kept would be well over 30 MB.
    assert grown < 8 * 1024 * 1024


def test_very_long_addresses_are_answered_but_not_kept():
    escaping.clear_caches()
    escape("x" * (escaping.CACHE_MAX_LENGTH + 1))
    assert escaping.cache_sizes() == 0
