"""
The cycle collector as `xmpp-gateway run` tunes it (gateway/service.py): rare
enough not to walk the messages in flight over and over, and still bounded, so
garbage in reference cycles goes within a known number of allocations.
"""

import gc
import weakref

from gateway.service import GC_THRESHOLDS, tune_gc


class Node:
    pass


def test_garbage_in_cycles_goes_within_the_youngest_threshold():
    old = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        gc.collect()
        node = Node()
        node.me = node                      # a cycle: reference counting alone never frees it
        gone = weakref.ref(node)
        del node
        kept = []
        for _ in range(GC_THRESHOLDS[0] + 1_000):
            kept.append([])                 # one more live container each: what the threshold counts
        assert gone() is None
    finally:
        gc.set_threshold(*old)


def test_the_bound_stays_small():
    # A youngest generation of at most 100,000 objects: a few MB of cyclic garbage at worst.
    assert 10_000 <= GC_THRESHOLDS[0] <= 100_000
