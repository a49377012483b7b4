"""
Occupant presences written as strings (muc.room_presence_strings, the join and
storm hot path) say exactly what the domish trees of muc.room_stanzas say: the
same elements, attributes and text once parsed, for random and hostile events.
"""

from __future__ import annotations

import random

from twisted.words.xish import domish

from gateway.model import RoomEvent
from gateway.xmpp import muc
from gateway.xmpp.stanzas import xml_safe

DOMAIN = "irc.example.org"
NASTY = ["", "a", "bob", "o'neil", 'q"uote', "<x>", "a&b", "tab\there", "nl\nx", "\x00ctl", "\ud800", "é€𝄞",
         "@", "/", "%", " sp ", "\u200b", "x" * 300]


_WS = str.maketrans({"\n": " ", "\t": " ", "\r": " "})


def tree(xml: str):
    found = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = found.append
    stream.DocumentEndEvent = lambda: None
    stream.parse(b"<s>" + xml.encode("utf-8") + b"</s>")
    [el] = found
    return shape(el)


def shape(el):
    # domish writes a newline or tab in an attribute raw, which parsing turns into a space;
    # quote_attr escapes it (the message hot path does the same): compared as whitespace.
    return (el.uri, el.name, sorted((str(k), " ".join(v.split(" ")).translate(_WS)) for k, v in el.attributes.items()),
            str(el) if not el.children or all(isinstance(c, str) for c in el.children) else "",
            [shape(c) for c in el.elements()])


def expected(event, non_anonymous, occupant):
    out = []
    for el in muc.room_stanzas(DOMAIN, event, non_anonymous=non_anonymous, occupant=occupant):
        if not el.getAttribute("from"):
            el["from"] = DOMAIN
        out.append(tree(el.toXml()))
    return out


def random_event(rng: random.Random) -> RoomEvent:
    pick = lambda: rng.choice(NASTY) if rng.random() < 0.3 else rng.choice(["alice", "bob", "carol"])
    return RoomEvent(
        component=DOMAIN, user=rng.choice(["u@example.org", "w'x@example.org", "u&v@example.org"]),
        resources=rng.sample(["phone", "laptop", "", "r'es", "r<es>"], rng.randint(1, 3)),
        room=rng.choice(["#chan%irc.test", "#c'h%irc.test", "#<x>%irc.test", "#é%irc.test", "#a b%irc.test"]),
        kind="presence", nick=pick(), unavailable=rng.random() < 0.3,
        role=rng.choice(["participant", "moderator", "visitor", "o'dd"]),
        affiliation=rng.choice(["none", "member", "admin", "owner", "<x>"]),
        own=rng.random() < 0.3, joined=rng.random() < 0.2, nick_assigned=rng.random() < 0.1,
        kicked=rng.random() < 0.1, service_stopping=rng.random() < 0.05,
        actor=pick() if rng.random() < 0.1 else None, new_nick=pick() if rng.random() < 0.1 else None,
        reason=pick() if rng.random() < 0.1 else None,
        occupant_user=rng.choice([None, "ident", "~id", "a'b"]),
        occupant_host=rng.choice([None, "host.example", "1.2.3.4", "h<st>"]))


def test_random_and_hostile_presences_say_what_the_trees_say():
    rng = random.Random(20261203)
    occupant = lambda room, nick: f"{nick}%{room.split('%')[-1]}"
    written = 0
    for n in range(6000):
        event = random_event(rng)
        non_anonymous = rng.random() < 0.5
        cache = ({}, {}) if n % 2 else None
        strings = muc.room_presence_strings(DOMAIN, event, non_anonymous=non_anonymous, occupant=occupant,
                                            cache=cache)
        if strings is None:
            assert event.actor or event.reason or event.new_nick or not xml_safe(event.nick or "")
            continue
        written += 1
        want = expected(event, non_anonymous, occupant)
        assert [tree(x) for x in strings] == want, (event, non_anonymous, strings)
        if cache is not None:                            # the same again from the caches
            again = muc.room_presence_strings(DOMAIN, event, non_anonymous=non_anonymous, occupant=occupant,
                                              cache=cache)
            assert [tree(x) for x in again] == want
    assert written > 3000


def test_the_plain_presence_is_one_string_per_resource():
    event = RoomEvent(component=DOMAIN, user="u@example.org", resources=["a", "b"], room="#c%irc.test",
                      kind="presence", nick="bob")
    strings = muc.room_presence_strings(DOMAIN, event)
    assert strings == [
        f"<presence from='#c%irc.test@{DOMAIN}/bob' to='u@example.org/{r}'><x xmlns='{muc.NS_MUC_USER}'>"
        "<item affiliation='none' role='participant'/></x></presence>" for r in ("a", "b")]


def test_a_nick_that_cleans_to_nothing_shares_no_cache_entry_with_room_messages():
    """room_message_strings caches the bare room as the sender of such a nick; a presence
    must not take it from the shared cache (it is written by the tree path instead)."""
    cache = ({}, {})
    line = RoomEvent(component=DOMAIN, user="u@example.org", resources=["a"], room="#c%irc.test",
                     kind="message", nick="\x00", body="hi")
    muc.room_message_strings(DOMAIN, line, cache=cache)
    presence = RoomEvent(component=DOMAIN, user="u@example.org", resources=["a"], room="#c%irc.test",
                         kind="presence", nick="\x00")
    assert muc.room_presence_strings(DOMAIN, presence, cache=cache) is None
    assert expected(presence, False, None)                    # the tree path writes it
