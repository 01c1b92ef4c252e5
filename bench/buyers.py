"""Who the load buys as: the identity settings every system of a run verifies, and buyer tokens.

One set of settings for every system (flashsale's ingest and the naive, rowlock and redis
baselines all build `ingest.auth.BuyerVerifier` from it), so all verify the same tokens the same
way and keep the same cache of verified tokens. The generators send one token per buyer: the
harness mints them before a phase (outside its load window) into a file, one token per line;
buyer i of a file is the subject `<tag>-<i>`, and request i of a generator uses line i.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from config.settings import Settings, load
from ingest.auth import BuyerVerifier, dev_tokens

BENCH_AUTH: dict[str, Any] = {
    "jwt_issuer": "flashsale-bench",
    "jwt_audience": "flashsale",
    "jwt_hs256_secrets": ["bench-jwt-secret-at-least-32-bytes-long"],
    "id_secret": "bench-id-secret",
    "admin_token": "bench-admin-token-at-least-32-bytes",
}
# The load comes from one address and many made-up buyers: the per-buyer and per-client limits
# would measure themselves, not the system. Settings not (yet) in config/settings.py are skipped.
BENCH_LIMITS: dict[str, Any] = {"user_rate_per_s": 0, "client_misses_per_s": 0, "client_rate_per_s": 0}
TOKEN_TTL_S = 3 * 3600  # longer than any run
TOKENS_MAX = 400_000  # per file: ~55 MB and a few seconds of minting
VERIFY_SAMPLE = 2_000  # tokens for the in-process verification micro-benchmark


# Settings the command line gave for the whole run (`--set NAME=VALUE`: choose_settings).
_CHOSEN: dict[str, str] = {}


def choose_settings(pairs: list[str]) -> None:
    """Take `NAME=VALUE` pairs as settings of every system of the run; a pair that is not a
    setting, or a value it cannot take, raises SettingsError (ValueError without a `=`)."""
    chosen = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{pair!r} is not NAME=VALUE")
        chosen[name.strip()] = value.strip()
    load(env={}, file=None, **{**bench_overrides(), **chosen})  # raises what it cannot take
    _CHOSEN.clear()
    _CHOSEN.update(chosen)


def bench_overrides() -> dict[str, Any]:
    fields = set(Settings.__struct_fields__)
    return {k: v for k, v in {**BENCH_AUTH, **BENCH_LIMITS, **_CHOSEN}.items() if k in fields}


def bench_settings(**overrides: Any) -> Settings:
    return load(env={}, file=None, **{**bench_overrides(), **overrides})


def skipped_limits() -> list[str]:
    """Limit settings the bench wants off but this checkout does not have."""
    return [k for k in BENCH_LIMITS if k not in Settings.__struct_fields__]


def write_tokens(path: Path, tag: str, count: int) -> int:
    """Tokens for buyers `<tag>-0 .. <tag>-<count-1>`, one per line; returns how many."""
    count = max(1, min(count, TOKENS_MAX))
    tokens = dev_tokens(bench_settings(), [f"{tag}-{i}" for i in range(count)], TOKEN_TTL_S)
    path.write_text("\n".join(tokens) + "\n")
    return count


def read_tokens(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


def verify_cost_us() -> tuple[float, float]:
    """(us per fresh token, us per already verified token) of ingest's verifier, in-process."""
    settings = bench_settings()
    tokens = dev_tokens(settings, [f"verify-{i}" for i in range(VERIFY_SAMPLE)], TOKEN_TTL_S)
    verifier = BuyerVerifier.from_settings(settings)
    now_s = time.time()
    t0 = time.perf_counter()
    for t in tokens:
        verifier.subject(t, now_s)
    t1 = time.perf_counter()
    for t in tokens:
        verifier.subject(t, now_s)
    t2 = time.perf_counter()
    return (t1 - t0) / len(tokens) * 1e6, (t2 - t1) / len(tokens) * 1e6
