"""Per-user token buckets for outbound messages."""

from __future__ import annotations

import time
from typing import Callable


class TokenBuckets:
    """
    ``burst`` messages at once, then ``rate`` per second. Buckets that have
    refilled completely are forgotten, so memory follows active users only.
    """

    def __init__(self, rate: float, burst: int, now: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.now = now
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> bool:
        now = self.now()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 10000:
            self._forget_full(now)
        return True

    def _forget_full(self, now: float) -> None:
        full = [k for k, (t, last) in self._buckets.items() if t + (now - last) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
