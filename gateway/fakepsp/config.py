"""The fake PSP's settings: its API key, ledger file, seed and dial-a-failure rates."""

from __future__ import annotations

import os

import msgspec


class Rates(msgspec.Struct, kw_only=True):
    latency_ms: float = 0.0
    decline_rate: float = 0.0
    timeout_rate: float = 0.0
    lost_rate: float = 0.0
    hang_s: float = 30.0  # how long a "timeout" hangs before doing the work
    capture_latency_ms: float = 0.0  # extra, captures only: a capture that lands late


class FakePspConfig(msgspec.Struct, kw_only=True):
    api_key: str = "sk_test_flashsale"
    rates: Rates = msgspec.field(default_factory=Rates)
    ledger_path: str | None = None  # JSON snapshot, reloaded at start; None = memory only
    seed: int | None = None
    idempotency_keys_max: int = 1_000_000  # oldest keys are forgotten past this (Stripe: 24 h)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> FakePspConfig:
        env = dict(os.environ if env is None else env)
        rates = Rates(
            latency_ms=float(env.get("FAKEPSP_LATENCY_MS", 0)),
            decline_rate=float(env.get("FAKEPSP_DECLINE_RATE", 0)),
            timeout_rate=float(env.get("FAKEPSP_TIMEOUT_RATE", 0)),
            lost_rate=float(env.get("FAKEPSP_LOST_RATE", 0)),
            hang_s=float(env.get("FAKEPSP_HANG_S", 30)),
            capture_latency_ms=float(env.get("FAKEPSP_CAPTURE_LATENCY_MS", 0)),
        )
        seed = env.get("FAKEPSP_SEED")
        return cls(
            api_key=env.get("FAKEPSP_API_KEY", "sk_test_flashsale"),
            rates=rates,
            ledger_path=env.get("FAKEPSP_LEDGER_PATH") or None,
            seed=int(seed) if seed else None,
            idempotency_keys_max=int(env.get("FAKEPSP_IDEMPOTENCY_KEYS_MAX", 1_000_000)),
        )
