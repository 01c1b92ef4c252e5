from hypothesis import given
from hypothesis import strategies as st

from ingest.ratelimit import RateLimiter


def test_burst_then_steady_rate():
    rl = RateLimiter(rate_per_s=2, burst=3, keys_max=10)
    assert [rl.acquire("u", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.acquire("u", 0.0) == 0.5
    assert rl.acquire("u", 0.5) == 0.0  # one token refilled
    assert rl.acquire("v", 0.5) == 0.0  # buyers do not share a bucket
    assert RateLimiter.retry_after_s(0.2) == 1 and RateLimiter.retry_after_s(2.1) == 3


def test_memory_is_bounded():
    rl = RateLimiter(rate_per_s=1, burst=1, keys_max=100)
    for i in range(1000):
        rl.acquire(f"u{i}", float(i))
    assert len(rl) == 100


@given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200),
       st.floats(min_value=0.5, max_value=20), st.integers(1, 10))
def test_never_more_than_burst_plus_rate_times_elapsed(gaps, rate, burst):
    rl = RateLimiter(rate_per_s=rate, burst=burst, keys_max=10)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += rl.acquire("u", now) == 0.0
    assert allowed <= burst + rate * now + 1e-9


def test_a_refund_gives_back_a_token_never_beyond_burst():
    rl = RateLimiter(rate_per_s=1, burst=2, keys_max=10)
    assert rl.acquire("u", 0.0) == 0.0 and rl.acquire("u", 0.0) == 0.0
    assert rl.acquire("u", 0.0) > 0  # spent
    rl.refund("u")
    assert rl.acquire("u", 0.0) == 0.0  # the refunded one
    rl.refund("u")
    rl.refund("u")
    rl.refund("u")
    got = [rl.acquire("u", 0.0) for _ in range(3)]
    assert got[:2] == [0.0, 0.0] and got[2] > 0  # burst 2, not 4
    rl.refund("never-seen")  # nothing to give back
    assert len(rl) == 1
