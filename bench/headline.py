"""The SPEC's targets and the figures every table reads them with: the headline comparison of
a run, flushes and CPU per purchase, which processes answer HTTP. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence

from bench.disk import per_accepted
from bench.results import Headline, PhaseResult, SystemRun
from bench.stats import ratio

TARGET_VS_NAIVE = 10.0

TARGET_VS_ECHO = 0.5

TARGET_P99_MS = 100.0

TARGET_FLUSHES_PER_ACCEPTED = 0.05
# Against the Redis seckill at equal durability (redis-always), at max on the accepted path.
TARGET_VS_REDIS = 1.5
TARGET_CPU_VS_REDIS = 0.6
# Processes whose CPU is the load's, not the system's.
NOT_SERVERS = ("generator", "bench harness", "wrk")


def headline(runs: Sequence[SystemRun]) -> Headline:
    h = Headline(hot_answered_per_s={}, many_accepted_per_s={}, many_p99_decision_at_80pct_ms={})
    for run in runs:
        h.invariant_violations += violations(run)
        for p in run.phases:
            if run.scenario == "hot-sku" and p.phase == "max":
                h.hot_answered_per_s[p.system] = p.answered_per_s
            if run.scenario == "hot-sku" and p.phase == "open@0.8" and p.system.startswith("flashsale"):
                h.p99_decision_at_80pct_ms = p.decision.p99
            if run.scenario == "many-skus" and p.phase == "max":
                h.many_accepted_per_s[p.system] = p.accepted_per_s
            if run.scenario == "many-skus" and p.phase == "open@0.8":
                h.many_p99_decision_at_80pct_ms[p.system] = p.decision.p99
    fs_hot = max((v for k, v in h.hot_answered_per_s.items() if k.startswith("flashsale")), default=None)
    fs_many = max((v for k, v in h.many_accepted_per_s.items() if k.startswith("flashsale")), default=None)
    h.vs_naive = ratio(fs_hot, h.hot_answered_per_s.get("naive"))
    h.vs_echo = ratio(fs_hot, h.hot_answered_per_s.get("echo"))
    h.many_vs_naive = ratio(fs_many, h.many_accepted_per_s.get("naive"))
    _accepted(h, runs)
    return h


def _accepted(h: Headline, runs: Sequence[SystemRun]) -> None:
    """The accepted path's figures at `max` (the first connection count), flashsale's from its
    best system (topology) of the run: its max, flushes, CPU and p99 at 0.8 x max."""
    maxes = {p.system: p for run in runs if run.scenario == "accepted"
             for p in run.phases if p.phase == "max"}
    h.acc_accepted_per_s = {k: p.accepted_per_s for k, p in maxes.items()}
    best = max((p for k, p in maxes.items() if k.startswith("flashsale")), key=lambda p: p.accepted_per_s,
               default=None)
    if best is None:
        return
    h.acc_system = best.system
    h.acc_vs_naive = ratio(best.accepted_per_s, h.acc_accepted_per_s.get("naive"))
    h.acc_vs_echo = ratio(best.accepted_per_s, h.acc_accepted_per_s.get("echo"))
    h.acc_vs_redis_always = ratio(best.accepted_per_s, h.acc_accepted_per_s.get("redis-always"))
    h.acc_flushes_per_accepted = flushes_per_accepted(best)
    redis = maxes.get("redis-always")
    if redis is not None:
        h.acc_cpu_vs_redis_always = ratio(cpu_us_per_request(best, server_names(best)),
                                          cpu_us_per_request(redis, server_names(redis)))
    h.acc_p99_decision_at_80pct_ms = next(
        (p.decision.p99 for run in runs if run.scenario == "accepted" for p in run.phases
         if p.system == best.system and p.phase == "open@0.8"), None)


def flushes_per_accepted(p: PhaseResult) -> float | None:
    return per_accepted(p.flush.flushes if p.flush else None, p.accepted)


def front_names(p: PhaseResult) -> list[str]:
    """The process(es) that answer HTTP: ingest (and ingest-2...) for flashsale, else the
    baseline's own process."""
    if p.system.startswith("flashsale"):
        return [n for n in p.cpu_pct if n.startswith("ingest")]
    return [p.system] if p.system in p.cpu_pct else []


def server_names(p: PhaseResult) -> list[str]:
    """Every process of the system under test (not the generators, not the harness)."""
    return [n for n in p.cpu_pct if n not in NOT_SERVERS]


def cpu_us_per_request(p: PhaseResult, names: Sequence[str] | None = None) -> float | None:
    """CPU microseconds per definitive answer of the named processes (default: the front)."""
    names = front_names(p) if names is None else names
    if not names or p.answered_per_s <= 0:
        return None
    pct = sum(p.cpu_pct.get(n, 0.0) for n in names)
    return pct / 100 / p.answered_per_s * 1e6


def system_family(label: str) -> str:
    return label.split("/", 1)[0]


def violations(run: SystemRun) -> int:
    i = run.invariants
    paid = run.paid.violations() if run.paid else 0
    return i.oversold_skus + i.duplicate_orders + i.lost + i.id_mismatch + paid
