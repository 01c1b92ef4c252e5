"""Buyer tokens for the load generators: minted for the bench's settings, accepted by ingest's
verifier as the buyer they name, and sized to the phase (no servers)."""

from __future__ import annotations

import time
from pathlib import Path

from bench.buyers import bench_overrides, bench_settings, read_tokens, write_tokens
from bench.genspec import GenSpec, Mode
from bench.runner import GEN_PROCESSES, PhasePlan, tokens_needed
from config.settings import Settings
from ingest.auth import BuyerVerifier


def test_tokens_name_their_buyers_in_order(tmp_path: Path) -> None:
    path = tmp_path / "t.tokens"
    assert write_tokens(path, "r1max-0", 3) == 3
    tokens = read_tokens(path)
    verifier = BuyerVerifier.from_settings(bench_settings())
    assert [verifier.subject(t, time.time()) for t in tokens] == ["r1max-0-0", "r1max-0-1", "r1max-0-2"]


def test_bench_turns_off_the_limits_this_checkout_has() -> None:
    overrides = bench_overrides()
    assert overrides["user_rate_per_s"] == 0
    assert set(overrides) <= set(Settings.__struct_fields__)  # a setting not there yet is left out
    assert len(overrides["jwt_hs256_secrets"][0].encode()) >= 32


def _spec(mode: Mode, rate: float = 0.0) -> GenSpec:
    return GenSpec(port=1, mode=mode, duration_s=10, start_at=0, tag="t", skus=["s"], rate=rate)


def test_tokens_needed_per_generator() -> None:
    open_plan = PhasePlan("open@0.8", "open", ["s"], 10, rate=2000)
    assert tokens_needed(open_plan, _spec("open", rate=1000)) == 10_016  # its own rate x duration
    closed = PhasePlan("max", "closed", ["s"], 10, rate_guess=20_000)
    assert tokens_needed(closed, _spec("closed")) == 200_000 // GEN_PROCESSES + 16
    repeat = PhasePlan("max-repeat", "closed", ["s"], 10, repeat_buyers=1000)
    assert tokens_needed(repeat, _spec("closed")) == 1000  # a fixed pool, reused
