"""results.json -> report.md tables, and the headline comparison. Pure functions (no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from bench.runner import PhaseResult, SystemRun
from bench.stats import LatencySummary, ratio

TARGET_VS_NAIVE = 10.0
TARGET_VS_ECHO = 0.5
TARGET_P99_MS = 100.0


class Headline(msgspec.Struct):
    """The SPEC's targets on one hot SKU, from one run."""

    flashsale_accepted_per_s: float | None = None
    naive_accepted_per_s: float | None = None
    rowlock_accepted_per_s: float | None = None
    echo_accepted_per_s: float | None = None
    vs_naive: float | None = None
    vs_echo: float | None = None
    p99_decision_at_80pct_ms: float | None = None
    invariant_violations: int = 0


class RunResult(msgspec.Struct, kw_only=True):
    started: str
    command: str
    machine: dict[str, str]
    settings: dict[str, str]
    runs: list[SystemRun] = []
    headline: Headline = msgspec.field(default_factory=Headline)
    notes: list[str] = []


def fmt(v: float | int | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 100:
        return f"{int(v):,}"
    return f"{v:,.{digits}f}"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; numbers right-aligned, None shown as '-'."""
    def cell(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, (int, float)):
            return fmt(v)
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
    for row in rows:
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def _lat(s: LatencySummary) -> list[float | None]:
    return [s.p50, s.p95, s.p99, s.max]


def _errors(p: PhaseResult) -> str:
    bad = {k: v for k, v in p.statuses.items() if not k.startswith("2")}
    bad.update(p.errors)
    return ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())) or "0"


def headline(runs: Sequence[SystemRun]) -> Headline:
    h = Headline()
    for run in runs:
        h.invariant_violations += _violations(run)
        if run.scenario != "hot-sku":
            continue
        for p in run.phases:
            if p.phase == "max":
                if run.system.startswith("flashsale"):
                    h.flashsale_accepted_per_s = p.accepted_per_s
                else:
                    setattr(h, f"{run.system}_accepted_per_s", p.accepted_per_s)
            if p.phase == "open@0.8" and run.system.startswith("flashsale"):
                h.p99_decision_at_80pct_ms = p.decision.p99
    h.vs_naive = ratio(h.flashsale_accepted_per_s, h.naive_accepted_per_s)
    h.vs_echo = ratio(h.flashsale_accepted_per_s, h.echo_accepted_per_s)
    return h


def _violations(run: SystemRun) -> int:
    i = run.invariants
    return i.oversold_skus + i.duplicate_orders + i.lost + i.id_mismatch


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**not met**")


def render_report(result: RunResult) -> str:
    h = result.headline
    out = [f"# flashsale benchmark - {result.started}", "", f"Command: `{result.command}`", ""]
    out.append("Machine: " + ", ".join(f"{k}: {v}" for k, v in result.machine.items()))
    out.append("")
    out.append("Settings: " + ", ".join(f"{k}: {v}" for k, v in result.settings.items()))
    out += ["", "## Targets (hot-sku)", ""]
    rows = [
        ["accepted/s flashsale / naive", fmt(h.vs_naive, 2), f">= {TARGET_VS_NAIVE:g}",
         _verdict(None if h.vs_naive is None else h.vs_naive >= TARGET_VS_NAIVE)],
        ["accepted/s flashsale / echo", fmt(h.vs_echo, 2), f">= {TARGET_VS_ECHO:g}",
         _verdict(None if h.vs_echo is None else h.vs_echo >= TARGET_VS_ECHO)],
        ["p99 decision latency at 0.8 x max (ms)", fmt(h.p99_decision_at_80pct_ms), f"<= {TARGET_P99_MS:g}",
         _verdict(None if h.p99_decision_at_80pct_ms is None else h.p99_decision_at_80pct_ms <= TARGET_P99_MS)],
        ["invariant violations (all runs)", h.invariant_violations, "0", _verdict(h.invariant_violations == 0)],
    ]
    out.append(render_table(["figure", "value", "target", "verdict"], rows))
    out += ["", f"Max accepted/s on the hot SKU: flashsale {fmt(h.flashsale_accepted_per_s)}, "
            f"naive {fmt(h.naive_accepted_per_s)}, rowlock {fmt(h.rowlock_accepted_per_s)}, "
            f"echo {fmt(h.echo_accepted_per_s)}.", ""]
    out += ["## Throughput and latency", "",
            "accept = POST -> 2xx answer; decision = POST -> answer carrying the decided state "
            "(`Prefer: wait`); decision (db) = `decided_at_ms - accepted_at_ms` in Postgres. "
            "`max` phases are closed loop (wrk latencies suffer coordinated omission); `open@F` "
            "phases are open loop at F x the max, latency from the intended send time. "
            "Latencies in ms.", ""]
    rows = []
    for run in result.runs:
        for p in run.phases:
            rows.append([run.scenario, p.system, p.phase, p.generator, p.offered_rate, p.accepted_per_s,
                         p.decisions_per_s, *_lat(p.accept), *_lat(p.decision), p.decision_db.p99,
                         _errors(p)])
    out.append(render_table(
        ["scenario", "system", "phase", "gen", "offered/s", "accepted/s", "decisions/s",
         "acc p50", "acc p95", "acc p99", "acc max", "dec p50", "dec p95", "dec p99", "dec max",
         "dec p99 (db)", "errors"], rows))
    out += ["", "## Invariants (must all be 0)", ""]
    rows = []
    for run in result.runs:
        i = run.invariants
        rows.append([run.scenario, run.phases[0].system if run.phases else run.system, i.oversold_skus,
                     i.duplicate_orders, i.lost, i.id_mismatch, i.accepted_ids, i.rows, i.sold, i.stock,
                     "yes" if run.drained else "**no**"])
    out.append(render_table(["scenario", "system", "oversold SKUs", "duplicate orders", "lost",
                             "id mismatch", "ids answered 2xx", "rows", "sold", "stock", "drained"], rows))
    retry_rows = [[run.phases[0].system, *(p.retry or {}).values()]
                  for run in result.runs for p in run.phases if p.retry]
    if retry_rows:
        out += ["", "## Retry storm", "",
                render_table(["system", "logical purchases", "retries", "gave up", "id mismatch"], retry_rows)]
    out += ["", "## CPU per process (% of one core, over the load window)", ""]
    names: list[str] = []
    for run in result.runs:
        for p in run.phases:
            for n in p.cpu_pct:
                if n not in names:
                    names.append(n)
    rows = [[run.scenario, p.system, p.phase, *(p.cpu_pct.get(n) for n in names)]
            for run in result.runs for p in run.phases]
    out.append(render_table(["scenario", "system", "phase", *names], rows))
    notes = list(result.notes)
    for run in result.runs:
        for p in run.phases:
            notes += [f"{run.scenario} {p.system} {p.phase}: {n}" for n in p.notes]
            if p.gen_lag_p99_ms is not None and p.gen_lag_p99_ms > 10:
                notes.append(f"{run.scenario} {p.system} {p.phase}: requests went out late (p99 "
                             f"{p.gen_lag_p99_ms:.1f} ms: generator CPU, or all its connections "
                             "busy); latency counts from the intended send time")
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"
