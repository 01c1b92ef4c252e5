"""Sums what a phase's generators and wrk measured into its `PhaseResult`."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from bench.generators import GenProcess, parse_wrk
from bench.genspec import GenResult, Mode
from bench.results import PhaseResult
from bench.stats import LatencySummary, summarize


@dataclass
class Tally:
    """Counts summed over the generators (and wrk) of one phase."""

    ids: set[str] = field(default_factory=set)
    accepted: int = 0  # 2xx
    answered: int = 0  # 2xx + 409
    per_second: list[int] = field(default_factory=list)


def add_generators(result: PhaseResult, tally: Tally, gens: list[GenProcess], sink: list[str],
                   mode: Mode) -> None:
    """Adds the Python generators' result files to the phase."""
    accept_ms: list[float] = []
    decision_ms: list[float] = []
    stream_ms: list[float] = []
    lag_ms: list[float] = []
    retry = {"logical": 0, "retries": 0, "gave_up": 0, "id_mismatch": 0}
    for gen in gens:
        if gen.proc.returncode != 0 or not gen.out.exists():
            result.notes.append(f"generator failed: {' | '.join(sink[-5:])}")
            continue
        g = msgspec.msgpack.decode(gen.out.read_bytes(), type=GenResult)
        _merge(result.statuses, g.statuses)
        _merge(result.errors, g.errors)
        tally.ids.update(g.accepted_ids)
        accept_ms += g.accept_ms
        decision_ms += g.decision_ms
        stream_ms += g.stream_decision_ms
        lag_ms += g.lag_ms
        tally.accepted += sum(n for code, n in g.statuses.items() if code.startswith("2"))
        tally.answered += g.answered
        tally.per_second = _add_lists(tally.per_second, g.per_second)
        result.clicks_repeated += g.clicks_repeated
        for k in retry:
            retry[k] += getattr(g, k)
        if g.undecided:
            result.errors["undecided_after_wait"] = result.errors.get("undecided_after_wait", 0) + g.undecided
    result.accept = summarize(accept_ms)
    result.decision = summarize(decision_ms)
    result.stream_decision = summarize(stream_ms)
    if lag_ms:
        result.gen_lag_p99_ms = summarize(lag_ms).p99
    if mode == "retry":
        result.retry = retry


def add_wrk(result: PhaseResult, tally: Tally, wrk_out: bytes) -> None:
    """Adds wrk's closed-loop figures to the phase (its latencies replace the generators')."""
    w = parse_wrk(wrk_out)
    if w is None:
        result.notes.append("wrk gave no result: " + wrk_out.decode(errors="replace")[-300:])
        return
    _merge(result.statuses, w.statuses)
    for k, v in w.errors.items():
        if v and k != "status":  # "status" = non-2xx answers, already in statuses
            result.errors[k] = result.errors.get(k, 0) + v
    tally.ids.update(i for i in w.ids if i != "p_echo")
    result.clicks_repeated += w.repeated
    tally.accepted += sum(n for code, n in w.statuses.items() if code.startswith("2"))
    tally.answered += sum(n for code, n in w.statuses.items() if code.startswith("2") or code == "409")
    lat = w.latency_us
    # wrk's latencies are closed-loop (coordinated omission applies): POST -> answer.
    result.accept = LatencySummary(count=w.requests, p50=lat.p50 / 1000, p95=lat.p95 / 1000,
                                   p99=lat.p99 / 1000, max=lat.max / 1000, mean=lat.mean / 1000)
    tally.per_second = _add_lists(tally.per_second, wrk_per_second(w.seconds))


def wrk_per_second(seconds: dict[int, int]) -> list[int]:
    """wrk's answers by unix second as a list from its first second (empty: no answers)."""
    secs = sorted(seconds.items())
    if not secs:
        return []
    first = secs[0][0]
    out = [0] * (secs[-1][0] - first + 1)
    for second, v in secs:
        out[second - first] += v
    return out


def add_totals(result: PhaseResult, tally: Tally, duration_s: float, system: str) -> None:
    result.accepted_per_s = round(tally.accepted / duration_s, 1)
    result.answered_per_s = round(tally.answered / duration_s, 1)
    result.accepted, result.answered = tally.accepted, tally.answered
    result.answered_per_second = tally.per_second
    if result.clicks_repeated and system != "echo":
        result.notes.append(f"{result.clicks_repeated:,} requests past the minted buyers were sent as "
                            "retries of earlier clicks (same buyer, same key)")


def _merge(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def _add_lists(a: list[int], b: list[int]) -> list[int]:
    out = [0] * max(len(a), len(b))
    for i, v in enumerate(a):
        out[i] += v
    for i, v in enumerate(b):
        out[i] += v
    return out
