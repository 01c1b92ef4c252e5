"""Prometheus helpers shared by the services."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import Histogram


def observe_many(histogram: Histogram, amounts: Iterable[float]) -> None:
    """`histogram.observe(a)` for every amount, as one update of each bucket hit and one of the
    sum: observe() takes a lock per call (~3-4 us an observation), and a writer's batch or an
    ingest's result batch observes one latency per purchase. The exposition is the same as
    observing them one by one (tests/unit/test_metrics.py). `histogram`: a labelled child, or a
    histogram without labels (a parent with labels has no buckets: AttributeError)."""
    bounds = histogram._upper_bounds  # ascending, the last +Inf
    hits = [0] * len(bounds)
    total, count = 0.0, 0
    for amount in amounts:
        count += 1
        # observe() counts an amount in the first bucket whose bound is >= it.
        index = bisect_left(bounds, amount)
        if amount <= bounds[index]:  # NaN: in no bucket, as observe() does (bisect says 0)
            hits[index] += 1
        total += amount
    if not count:
        return
    histogram._sum.inc(total)
    for bucket, n in zip(histogram._buckets, hits, strict=True):
        if n:
            bucket.inc(n)
