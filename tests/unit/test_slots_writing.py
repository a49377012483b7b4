"""
StreamGroup._writing (every stanza the bridge writes, both IRC directions) picks
the primary without building the member list when the primary holds its slot:
the same stream and the same record of what was written where as the walk over
every member (copied below as it was), on random groups and connection changes.
"""

from __future__ import annotations

import random

import pytest

from gateway.xmpp.slots import StreamGroup


class _Stream:
    def __init__(self, name: str):
        self.name, self.domain, self.connected, self.generation = name, "irc.example.org", False, 0

    def __repr__(self) -> str:
        return self.name


def _reference_writing(group: StreamGroup):
    """StreamGroup._writing before the change (226f0dd): current() over every member."""
    stream = group.current()
    if stream.connected:
        seen = group._written.get(stream)
        group._written[stream] = stream.generation if seen in (None, stream.generation) else -1
    return stream


def _play(seed: int, writing) -> list:
    rng = random.Random(seed)
    primary = _Stream("p")
    group = StreamGroup(primary, bridge=None)
    group.spares = [_Stream(f"s{i}") for i in range(rng.randint(0, 3))]
    seen = []
    for _ in range(200):
        r = rng.random()
        if r < 0.2:
            s = rng.choice(group.members)
            s.connected = not s.connected
            if s.connected and rng.random() < 0.5:
                s.generation += 1                     # a reconnect
        elif r < 0.25:
            group._written = {}                       # a barrier took the record
        else:
            seen.append((writing(group), dict(group._written)))
    return [(repr(s), sorted((repr(k), v) for k, v in w.items())) for s, w in seen]


@pytest.mark.parametrize("seed", range(300))
def test_the_same_stream_and_record_as_the_walk(seed):
    assert _play(seed, StreamGroup._writing) == _play(seed, _reference_writing)


def test_a_connected_primary_is_taken_without_the_member_list(monkeypatch):
    primary = _Stream("p")
    primary.connected = True
    group = StreamGroup(primary, bridge=None)
    monkeypatch.setattr(StreamGroup, "members", property(lambda self: pytest.fail("member list built")))
    assert group._writing() is primary and group._written == {primary: 0}
