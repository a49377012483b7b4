"""SMS segment rules and phone number normalisation."""

import pytest
from hypothesis import given, strategies as st

from gateway.adapters.sms import numbers, segments
from gateway.model import AddressError


@pytest.mark.parametrize("text,enc,n", [
    ("a" * 160, "GSM-7", 1),
    ("a" * 161, "GSM-7", 2),            # 153 + 8
    ("a" * 306, "GSM-7", 2),
    ("a" * 307, "GSM-7", 3),
    ("€" * 80, "GSM-7", 1),             # 160 septets: each € is an escape pair
    ("€" * 81, "GSM-7", 2),
    ("é" * 160, "GSM-7", 1),            # é is in the basic table
    ("ç" * 70, "UCS-2", 1),             # ç is not (only Ç is)
    ("ç" * 71, "UCS-2", 2),
    ("ж" * 300, "UCS-2", 5),            # 67 * 4 = 268 < 300 <= 335
    ("😀" * 35, "UCS-2", 1),            # 70 UTF-16 units
    ("😀" * 36, "UCS-2", 2),
])
def test_segment_counts(text, enc, n):
    assert segments.encoding(text) == enc
    assert segments.count(text) == n


def test_escape_pairs_and_surrogates_are_never_split():
    text = "a" * 152 + "€" + "b" * 10    # 164 septets: two parts; the € would straddle 152/153
    parts = segments.split(text)
    assert parts == ["a" * 152, "€" + "b" * 10]
    emoji = "x" * 66 + "😀" + "y" * 10
    assert segments.split(emoji)[0] == "x" * 66


@given(st.text(min_size=1, max_size=600))
def test_parts_join_back_and_fit(text):
    parts = segments.split(text)
    assert "".join(parts) == text
    enc = segments.encoding(text)
    limit = segments.SINGLE[enc] if len(parts) == 1 else segments.PART[enc]
    for part in parts:
        assert sum(segments._cost(c, enc) for c in part) <= limit


@pytest.mark.parametrize("typed,region,e164", [
    ("+1 415 555 0100", None, "+14155550100"),
    ("(202) 555-0143", "US", "+12025550143"),
    ("020 7946 0958", "GB", "+442079460958"),
    ("+44 20 7946 0958", "US", "+442079460958"),
])
def test_normalize(typed, region, e164):
    assert numbers.normalize(typed, region) == e164


@pytest.mark.parametrize("typed,region,fragment", [
    ("", "US", "empty"),
    ("hello", "US", "is not a phone number"),
    ("555 0100", None, "write it with + and the country code"),
    ("+1 555 123 4567", "US", "is not a valid phone number"),
])
def test_normalize_refuses_with_text(typed, region, fragment):
    with pytest.raises(AddressError) as e:
        numbers.normalize(typed, region)
    assert fragment in e.value.text


def test_country():
    assert numbers.country("+442079460958") == "GB" and numbers.country("+14155550100") == "US"
