"""Pure parts of the bench: percentiles, summaries, arrival schedules. No timing thresholds."""

from __future__ import annotations

import pytest

from bench.stats import arrival_offset, percentile, ratio, schedule, split_rate, summarize


def test_percentile_nearest_rank_returns_observed_values() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.5], 99) == 7.5


def test_percentile_small_samples_round_up() -> None:
    # Nearest rank: p99 of 10 samples is the largest, not an interpolation below it.
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 99) == 10
    assert percentile([1, 2, 3, 4], 50) == 2


def test_percentile_empty_and_bounds() -> None:
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_summarize_sorts_and_reports_max_and_mean() -> None:
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.count, s.p50, s.max, s.mean) == (5, 3.0, 5.0, 3.0)
    assert summarize([]).count == 0 and summarize([]).p99 is None


def test_arrival_schedule_is_fixed_rate_from_zero() -> None:
    assert schedule(4, 1.0) == [0.0, 0.25, 0.5, 0.75]
    assert len(schedule(1000, 2.5)) == 2500
    assert arrival_offset(10, 100) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        arrival_offset(1, 0)


def test_split_rate_keeps_the_total() -> None:
    parts = split_rate(1000, 3)
    assert len(parts) == 3 and sum(parts) == pytest.approx(1000)


def test_ratio_handles_missing_and_zero() -> None:
    assert ratio(10, 4) == 2.5
    assert ratio(None, 4) is None and ratio(1, 0) is None


def test_cpu_delta_keeps_processes_that_exited() -> None:
    from bench.cpu import cpu_delta

    # Root 10 with a backend 11 that exits during the phase (2 s before it, 3 s in all when it
    # ends: the 3 s move into the root's reaped-children total, key -10) and a backend 12 that
    # starts during it.
    before = {-10: 5.0, 10: 1.0, 11: 2.0}
    after = {-10: 8.0, 10: 1.5, 12: 0.25}
    assert cpu_delta(before, after) == 1.0 + 0.5 + 0.25
