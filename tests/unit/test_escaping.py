"""XEP-0106 escaping: the spec's own examples, then properties over arbitrary text."""

import pytest
from hypothesis import given, strategies as st

from gateway.xmpp.escaping import EscapingError, escape, unescape

# Table from XEP-0106 §5.1 (and its variations of the backslash rule).
SPEC_EXAMPLES = [
    ("space cadet", "space\\20cadet"),
    ('call me "ishmael"', "call\\20me\\20\\22ishmael\\22"),
    ("at&t guy", "at\\26t\\20guy"),
    ("d'artagnan", "d\\27artagnan"),
    ("/.fanboy", "\\2f.fanboy"),
    ("::foo::", "\\3a\\3afoo\\3a\\3a"),
    ("<foo>", "\\3cfoo\\3e"),
    ("user@host", "user\\40host"),
    ("c:\\net", "c\\3a\\net"),
    ("c:\\\\net", "c\\3a\\\\net"),
    ("c:\\cool stuff", "c\\3a\\cool\\20stuff"),
    ("c:\\5commas", "c\\3a\\5c5commas"),
    ("alice@example.net", "alice\\40example.net"),
    ("#chan%irc.example.org", "#chan%irc.example.org"),
    ("+15551234567", "+15551234567"),
]


@pytest.mark.parametrize("raw,escaped", SPEC_EXAMPLES)
def test_spec_examples(raw, escaped):
    assert escape(raw) == escaped
    assert unescape(escaped) == raw


@pytest.mark.parametrize("bad", [" lead", "trail ", " ", ""])
def test_space_never_first_or_last(bad):
    with pytest.raises(EscapingError):
        escape(bad)


@pytest.mark.parametrize("text", ["\\zz", "a\\4", "\\", "x\\2", "\\g0", "\\5", "100\\%"])
def test_unknown_sequences_left_alone(text):
    assert unescape(text) == text


def test_unescape_each_sequence():
    assert unescape("\\20\\22\\26\\27\\2f\\3a\\3c\\3e\\40\\5c") == " \"&'/:<>@\\"


addresses = st.text(
    alphabet=st.sampled_from(list(" \"&'/:<>@\\abcXYZ0123456789%#+.") + ["é", "日"]), min_size=1
).filter(lambda s: s[0] != " " and s[-1] != " ")


@given(addresses)
def test_round_trip(text):
    assert unescape(escape(text)) == text


@given(addresses)
def test_escaped_has_no_forbidden_characters(text):
    escaped = escape(text)
    assert not set(escaped) & set(" \"&'/:<>@")
    assert not escaped.startswith("\\20") and not escaped.endswith("\\20")


@given(st.text(min_size=1))
def test_unescape_never_raises_and_is_shorter_or_equal(text):
    assert len(unescape(text)) <= len(text)
