"""Pure helpers: percentiles, latency summaries, open-loop arrival schedules. No I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence (p in [0, 100]); None when empty.

    Nearest-rank (not interpolation) so every reported figure is a latency that was observed.
    """
    if not sorted_values:
        return None
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {p}")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class LatencySummary(msgspec.Struct):
    """Milliseconds. `count` is how many samples the figures come from."""

    count: int = 0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    mean: float | None = None


def summarize(values_ms: Sequence[float]) -> LatencySummary:
    if not values_ms:
        return LatencySummary()
    s = sorted(values_ms)
    return LatencySummary(
        count=len(s),
        p50=percentile(s, 50),
        p95=percentile(s, 95),
        p99=percentile(s, 99),
        max=s[-1],
        mean=sum(s) / len(s),
    )


def arrival_offset(index: int, rate_per_s: float) -> float:
    """Seconds after the start at which request `index` (0-based) is due, at a fixed rate.

    A fixed (not Poisson) spacing keeps runs reproducible; what matters for coordinated omission
    is that latency is measured from this intended time, not from when the request went out.
    """
    if rate_per_s <= 0:
        raise ValueError("rate must be > 0")
    return index / rate_per_s


def schedule(rate_per_s: float, duration_s: float) -> list[float]:
    """All intended send offsets of an open-loop phase: [0, duration) at `rate_per_s`."""
    n = int(rate_per_s * duration_s)
    return [arrival_offset(i, rate_per_s) for i in range(n)]


def split_rate(rate_per_s: float, processes: int) -> list[float]:
    """Share an offered rate between generator processes (each runs its own schedule)."""
    if processes < 1:
        raise ValueError("processes must be >= 1")
    return [rate_per_s / processes] * processes


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b
