"""The gateway's retry pacing and error sorting, without any server."""

from __future__ import annotations

import random

from gateway.psp import backoff_s, idempotency_key


def test_backoff_is_jittered_exponential_and_capped():
    rng = random.Random(1)
    for attempt in range(10):
        cap_s = min(5.0, 0.2 * 2 ** attempt)
        samples = [backoff_s(attempt, 0.2, 5.0, rng) for _ in range(200)]
        assert all(0 <= x <= cap_s for x in samples)
        assert max(samples) > cap_s * 0.8  # spread over the whole window, not a fixed delay


def test_idempotency_keys_are_per_purchase_and_step():
    assert idempotency_key("p_a", "authorize") == "p_a:authorize"
    assert idempotency_key("p_a", "capture") != idempotency_key("p_b", "capture")
    # A purchase can have two captures to refund; each refund has its own key.
    assert idempotency_key("p_a", "refund", "pi_1") != idempotency_key("p_a", "refund", "pi_2")
