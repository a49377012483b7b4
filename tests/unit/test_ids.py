"""
Message ids and claim tokens come from a pool of kernel randomness instead of
one os.urandom call each: a call per id was a system call that also gave the
GIL away to the SQLite thread on every message. The pool must not cost what
made the ids worth having: each is still 128 bits nobody can predict from the
others, none repeats, and a forked child never hands out its parent's ids.
"""

import os
import re
import threading

import pytest

from gateway.model import OutboundMessage, new_id
from gateway.registry import sql


@pytest.fixture
def urandom_calls(monkeypatch):
    calls = []
    real = os.urandom

    def counting(n):
        calls.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", counting)
    return calls


def test_ids_are_32_hex_digits_and_unique():
    seen = {new_id() for _ in range(200_000)}
    assert len(seen) == 200_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in seen)


def test_tokens_and_message_ids_share_the_pool_and_never_meet():
    drawn = [new_id() if n % 2 else sql.new_token() for n in range(20_000)]
    assert len(set(drawn)) == len(drawn)
    assert OutboundMessage(component="sms.example.org", user="a@b", recipient="x", body="y").id not in drawn


def test_a_system_call_buys_many_ids(urandom_calls):
    for _ in range(10_000):
        new_id()
        sql.new_token()
    # One os.urandom per id was 20,000 calls.
    assert len(urandom_calls) <= 20_000 // 100
    # Every id still costs 16 fresh bytes (less what the pool held before the count began).
    assert sum(urandom_calls) >= 20_000 * 16 - 65_536


def test_a_refill_is_rare_enough_not_to_wait_on_the_gil(urandom_calls):
    # Each refill is a system call that gives the GIL away, and with the SQLite thread busy the
    # reactor waits for it to come back (0.85 ms per call under load, cProfile over core_path):
    # one refill per 4,096 ids, not per 256.
    for _ in range(40_960):
        new_id()
    assert len(urandom_calls) <= 11


def test_ids_carry_the_kernels_bits_unchanged(monkeypatch):
    from gateway import ids
    # What the pool hands out is exactly what the kernel gave, in order, no byte twice.
    stream = bytes(range(256)) * 1024
    at = [0]

    def fake(n):
        out = stream[at[0]:at[0] + n]
        at[0] += n
        return out

    ids._reset()
    monkeypatch.setattr(os, "urandom", fake)
    got = "".join(new_id() for _ in range(ids.POOL_BYTES // 16 * 2))
    ids._reset()
    assert bytes.fromhex(got) == stream[:ids.POOL_BYTES * 2]


def test_bits_are_spread_evenly():
    # Not a proof of randomness (the kernel gives that), a check nothing skews it.
    ones = sum(bin(int(new_id(), 16)).count("1") for _ in range(4_000))
    assert abs(ones / (4_000 * 128) - 0.5) < 0.01


def test_threads_drawing_at_once_get_distinct_ids():
    out: list[list[str]] = [[] for _ in range(4)]

    def draw(mine):
        for _ in range(20_000):
            mine.append(new_id())

    workers = [threading.Thread(target=draw, args=(mine,)) for mine in out]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    everything = [i for mine in out for i in mine]
    assert len(set(everything)) == len(everything) == 80_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_repeat_its_parents_ids():
    new_id()                        # the pool is full of ids not yet handed out
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, " ".join(new_id() for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 65536):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = {new_id() for _ in range(50)}
    assert len(child.split()) == 50
    assert not parent & set(child.decode().split())
