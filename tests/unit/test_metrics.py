"""observe_many: the same exposition as observing each amount on its own."""

import math

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from flashsale.metrics import observe_many

BUCKETS = (0.002, 0.005, 0.01, 0.1, 1.0)
# On a bound, between bounds, below the first, above the last (+Inf), zero, repeated.
AMOUNTS = [0.002, 0.003, 0.0, 0.1, 0.5, 7.0, 0.002, 1.0, 1.0000001]


def _exposition(observe: str, amounts: list[float]) -> bytes:
    registry = CollectorRegistry()
    h = Histogram("t_latency_seconds", "t", ["shard"], buckets=BUCKETS, registry=registry)
    plain = Histogram("t_plain_seconds", "t", buckets=BUCKETS, registry=registry)
    for target in (h.labels("0"), plain):
        if observe == "one by one":
            for a in amounts:
                target.observe(a)
        else:
            observe_many(target, amounts)
    # _created holds the wall clock of each histogram's creation: not part of the comparison.
    return b"\n".join(line for line in generate_latest(registry).splitlines()
                      if b"_created" not in line)


def test_observe_many_exposes_what_observing_one_by_one_does():
    assert _exposition("many", AMOUNTS) == _exposition("one by one", AMOUNTS)


def test_observe_many_of_nothing_changes_nothing():
    assert _exposition("many", []) == _exposition("one by one", [])


def test_observe_many_counts_nan_in_no_bucket_as_observe_does():
    amounts = [0.5, math.nan]
    assert _exposition("many", amounts) == _exposition("one by one", amounts)
