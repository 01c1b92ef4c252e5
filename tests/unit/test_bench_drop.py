"""The drop scenario's plan and arithmetic (the scenario itself runs only in the bench)."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.drop import group_of, noise_2sigma, plan_clicks, shares


def test_the_crowd_clicks_within_the_window_bots_first_with_their_keys():
    clicks = plan_clicks(buyers=1000, bot_share=0.1, bot_keys=10, window_s=2, head_start_ms=200)
    per_group = Counter(group_of(c.user) for c in clicks)
    assert per_group == {"bots": 100 * 10, "people": 900}
    assert len({c.key for c in clicks}) == len(clicks)
    assert all(0 <= c.at_ms < 2000 for c in clicks)
    assert min(c.at_ms for c in clicks if c.user.startswith("people")) >= 200
    assert [c.at_ms for c in clicks] == sorted(c.at_ms for c in clicks)
    assert plan_clicks(1000, 0.1, 10, 2, 200) == clicks  # seeded: every run the same crowd


def test_shares_of_stock_and_buyers():
    out = shares({"fcfs": Counter(bots=90, people=10), "draw": Counter(bots=11, people=89)},
                 {"bots": 100, "people": 900})
    bots, people = out
    assert (bots.buyer_share, bots.fcfs_share, bots.draw_share) == (0.1, 0.9, 0.11)
    assert (people.fcfs_units, people.draw_units) == (10, 89)


def test_noise_of_a_drawn_share():
    # 1,000 winners of 20,000 buyers, a tenth of them bots: about +-1.85 points.
    assert noise_2sigma(0.1, 1000, 20_000) == pytest.approx(0.0185, abs=0.0005)
    assert noise_2sigma(0.1, 20_000, 20_000) == 0.0  # everyone wins: no noise
