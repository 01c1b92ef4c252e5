"""Per-buyer rate limit at the edge: a token bucket per user id, bounded in memory.

A buyer's app that hammers "buy" (or a bot behind one account) gets 429 + Retry-After instead of
taking publish capacity from everyone else. Pure: the caller passes the clock.
"""

from __future__ import annotations

import math
from collections import OrderedDict


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, keys_max: int) -> None:
        if rate_per_s <= 0 or burst < 1 or keys_max < 1:
            raise ValueError("rate_per_s > 0, burst >= 1 and keys_max >= 1 are required")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.keys_max = keys_max
        # key -> (tokens, monotonic time of that count); least recently seen first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, key: str, now_s: float) -> float:
        """0.0 if `key` may go now (a token is spent); else seconds until it may."""
        tokens, at_s = self._buckets.pop(key, (float(self.burst), now_s))
        tokens = min(float(self.burst), tokens + max(0.0, now_s - at_s) * self.rate_per_s)
        wait_s = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait_s = (1.0 - tokens) / self.rate_per_s
        self._buckets[key] = (tokens, now_s)
        if len(self._buckets) > self.keys_max:
            # Forgetting the quietest buyer only ever gives them a fresh (full) bucket.
            self._buckets.popitem(last=False)
        return wait_s

    def refund(self, key: str) -> None:
        """Give back a token `acquire` spent (never beyond `burst`): the work it paid for
        turned out to be free."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets[key] = (min(float(self.burst), bucket[0] + 1.0), bucket[1])

    def wait_s(self, key: str, now_s: float) -> float:
        """Seconds until `key` would have a token, without spending one."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = min(float(self.burst), bucket[0] + max(0.0, now_s - bucket[1]) * self.rate_per_s)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate_per_s

    @staticmethod
    def retry_after_s(wait_s: float) -> int:
        return max(1, math.ceil(wait_s))

    def __len__(self) -> int:
        return len(self._buckets)
