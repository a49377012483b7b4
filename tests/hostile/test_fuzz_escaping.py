"""
XEP-0106 over all of Unicode (tests/unit/test_escaping.py covers the spec's
table and a small alphabet): whatever a foreign network sends, ``escape``
either refuses it or gives a localpart every XMPP server accepts (checked
with Twisted's own strict JID parser, an implementation independent of
ours), and the JID leads back to the same address; ``address_of`` never
accepts two spellings of one address.
"""

from __future__ import annotations

import stringprep

from hypothesis import given, strategies as st
from twisted.words.protocols.jabber.jid import JID
from twisted.words.protocols.jabber.xmpp_stringprep import Profile, nodeprep

from gateway.xmpp.escaping import MAX_LOCALPART, EscapingError, address_of, escape, unescape

#: Characters foreign addresses are made of, and the ones that break JIDs.
HOSTILE = ["\u00a0", "\t", "\u200e", "\u200f", "\u3000", "\ue000", "\U000f0000", "\u202e", "\ufeff", "\x7f",
           "\u0301", "\u05d0", "\u0627", "\\", "\\20", "\\5c", "\\3a", " ", "@", "/", "\u2028", "\ufffd", "\u00df",
           "\u212a", "\U0001f600"]
addresses = st.lists(st.sampled_from(HOSTILE) | st.characters(blacklist_categories=("Cs",)),
                     min_size=1, max_size=40).map("".join)


@given(addresses)
def test_escaped_is_a_valid_localpart_or_refused(address):
    try:
        local = escape(address)
    except EscapingError:
        return
    if any(stringprep.in_table_a1(c) for c in local):
        # Code points Unicode 3.2 did not assign (emoji, newer scripts): servers take them
        # (Prosody's nodeprep is not strict), Twisted's JID class would not.
        prepared = Profile(mappings=nodeprep.mappings, prohibiteds=nodeprep.prohibiteds,
                           check_unassigneds=False).prepare(local)
    else:
        prepared = JID(f"{local}@gw.example.org").user    # raises on anything nodeprep refuses
    assert len(prepared.encode()) <= MAX_LOCALPART
    assert unescape(local) == address
    assert address_of(local) == address


@given(addresses)
def test_every_localpart_names_at_most_one_address(text):
    """A localpart ``address_of`` accepts is exactly what ``escape`` makes of that address."""
    try:
        address = address_of(text)
    except EscapingError:
        return
    assert escape(address).lower() == text.lower()


@given(st.integers(min_value=1, max_value=3000), st.sampled_from(["a", "\u00e9", "\u65e5", "@"]))
def test_length_limit_counts_bytes(n, ch):
    address = ch * n
    try:
        local = escape(address)
    except EscapingError:
        assert len(address.replace("@", "\\40").encode()) > MAX_LOCALPART
        return
    assert len(local.encode()) <= MAX_LOCALPART or len(nodeprep.prepare(local).encode()) <= MAX_LOCALPART
