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
    """The SPEC's targets, from one run.

    hot-sku figures are definitive answers per second (2xx + 409 sold out): once the hot SKU is
    sold out, flashsale answers 409 at the edge while naive/rowlock answer 200 "rejected" after a
    transaction; both tell the buyer the outcome. many-skus never sells out, so its figures are
    purchases accepted per second through the whole accept path (publish, commit).
    """

    hot_answered_per_s: dict[str, float] = {}
    many_accepted_per_s: dict[str, float] = {}
    vs_naive: float | None = None
    vs_echo: float | None = None
    many_vs_naive: float | None = None
    p99_decision_at_80pct_ms: float | None = None
    many_p99_decision_at_80pct_ms: dict[str, float | None] = {}
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
    if isinstance(v, int) or (float(v).is_integer() and abs(v) >= 100):
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
    bad = {k: v for k, v in p.statuses.items() if not k.startswith("2") and k != "409"}
    bad.update(p.errors)
    return ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())) or "0"


def headline(runs: Sequence[SystemRun]) -> Headline:
    h = Headline(hot_answered_per_s={}, many_accepted_per_s={}, many_p99_decision_at_80pct_ms={})
    for run in runs:
        h.invariant_violations += _violations(run)
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
    return h


def _violations(run: SystemRun) -> int:
    i = run.invariants
    paid = run.paid.violations() if run.paid else 0
    return i.oversold_skus + i.duplicate_orders + i.lost + i.id_mismatch + paid


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**not met**")


def render_report(result: RunResult) -> str:
    h = result.headline
    out = [f"# flashsale benchmark - {result.started}", "", f"Command: `{result.command}`", ""]
    out.append("Machine: " + ", ".join(f"{k}: {v}" for k, v in result.machine.items()))
    out.append("")
    out.append("Settings: " + ", ".join(f"{k}: {v}" for k, v in result.settings.items()))
    out += ["", "## Targets", ""]
    p99_hot = h.p99_decision_at_80pct_ms
    rows: list[Sequence[object]] = [
        ["hot-sku answered/s flashsale / naive", fmt(h.vs_naive, 2), f">= {TARGET_VS_NAIVE:g}",
         _verdict(None if h.vs_naive is None else h.vs_naive >= TARGET_VS_NAIVE)],
        ["hot-sku answered/s flashsale / echo", fmt(h.vs_echo, 2), f">= {TARGET_VS_ECHO:g}",
         _verdict(None if h.vs_echo is None else h.vs_echo >= TARGET_VS_ECHO)],
        ["many-skus accepted/s flashsale (best shards) / naive", fmt(h.many_vs_naive, 2),
         f">= {TARGET_VS_NAIVE:g}",
         _verdict(None if h.many_vs_naive is None else h.many_vs_naive >= TARGET_VS_NAIVE)],
        ["hot-sku p99 decision at 0.8 x max (ms)", fmt(p99_hot), f"<= {TARGET_P99_MS:g}",
         _verdict(None if p99_hot is None else p99_hot <= TARGET_P99_MS)],
        *[[f"many-skus p99 decision at 0.8 x max, {k} (ms)", fmt(v), f"<= {TARGET_P99_MS:g}",
           _verdict(None if v is None else v <= TARGET_P99_MS)]
          for k, v in h.many_p99_decision_at_80pct_ms.items() if k.startswith("flashsale")],
        ["invariant violations (all runs)", h.invariant_violations, "0",
         _verdict(h.invariant_violations == 0)],
    ]
    out.append(render_table(["figure", "value", "target", "verdict"], rows))
    out += ["", "hot-sku max answered/s: " + (", ".join(
        f"{k} {fmt(v)}" for k, v in h.hot_answered_per_s.items()) or "-") + ". many-skus max accepted/s: "
        + (", ".join(f"{k} {fmt(v)}" for k, v in h.many_accepted_per_s.items()) or "-") + ".", "",
        "answered = definitive answers (2xx, or 409 sold out from flashsale's edge fast path); "
        "accepted = 2xx (a purchase exists).", ""]
    out += ["## Throughput and latency", "",
            "acc = POST -> answer (2xx or 409 sold out); dec = POST -> answer carrying the decided "
            "state (`Prefer: wait`, a synchronous baseline's 200, or 409 sold out); "
            "decision (db) = `decided_at_ms - accepted_at_ms` in Postgres. "
            "`max` phases are closed loop (wrk latencies suffer coordinated omission); `open@F` "
            "phases are open loop at F x the max, latency from the intended send time. "
            "Latencies in ms.", ""]
    rows = []
    for run in result.runs:
        for p in run.phases:
            rows.append([run.scenario, p.system, p.phase, p.generator, p.offered_rate, p.answered_per_s,
                         p.accepted_per_s, p.decisions_per_s, *_lat(p.accept), *_lat(p.decision),
                         p.decision_db.p99, p.statuses.get("409"), _errors(p)])
    out.append(render_table(
        ["scenario", "system", "phase", "gen", "offered/s", "answered/s", "accepted/s", "decisions/s",
         "acc p50", "acc p95", "acc p99", "acc max", "dec p50", "dec p95", "dec p99", "dec max",
         "dec p99 (db)", "409 sold out", "errors"], rows))
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
                render_table(["system", "logical purchases", "retries", "gave up", "id mismatch"],
                             retry_rows)]
    out += render_paid(result.runs)
    out += ["", "## CPU per process (% of one core, over the load window)", ""]
    names: list[str] = []
    for run in result.runs:
        for p in run.phases:
            for n in p.cpu_pct:
                if n not in names:
                    names.append(n)
    rows = [[run.scenario, p.system, p.phase, p.box_busy_pct, p.steal_pct, *(p.cpu_pct.get(n) for n in names)]
            for run in result.runs for p in run.phases]
    out.append("box busy = all cores of the box, % busy; steal = % taken by the hypervisor for other "
               "guests (neighbours' load: figures with high steal are noisy).")
    out.append("")
    out.append(render_table(["scenario", "system", "phase", "box busy %", "steal %", *names], rows))
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


def render_paid(runs: Sequence[SystemRun]) -> list[str]:
    """The paid scenario's section: decision and payment latency, outcomes, money checks."""
    paid = [(run, run.paid) for run in runs if run.paid is not None]
    if not paid:
        return []
    out = ["", "## Payment required (paid scenario)", ""]
    run, f = paid[0]
    out.append(f"SKU `{f.sku}`: stock {f.stock:,}, `payment: required`, reservation TTL {f.ttl_s} s. "
               "Buyers' tokens (tenths): " + ", ".join(f"{k} {v}" for k, v in f.tokens.items())
               + ". Fake PSP: " + ", ".join(f"{k} {v:g}" for k, v in f.psp_rates.items())
               + " (timeouts and lost answers only hit tokens other than tok_visa / tok_chargeDeclined).")
    out.append("")
    rows = []
    for run, f in paid:
        p = run.phases[0] if run.phases else None
        rows.append([
            p.system if p else run.system, p.offered_rate if p else None, p.accepted_per_s if p else None,
            *(_lat(p.decision)[:3] if p else [None] * 3), f.reserve_db.p99,
            f.confirmed_per_s_in_load, f.confirmed_per_s, *_lat(f.confirm_db)[:3], f.settle_s,
            (p.cpu_pct.get("gateway") if p else None), (p.cpu_pct.get("fakepsp") if p else None),
        ])
    out.append(render_table(
        ["system", "offered/s", "accepted/s", "reserved p50", "reserved p95", "reserved p99",
         "reserved p99 (db)", "confirmed/s in load", "confirmed/s to last", "confirmed p50",
         "confirmed p95", "confirmed p99", "settled after load (s)", "gateway CPU %", "fakepsp CPU %"], rows))
    out += ["", "reserved = POST -> answer carrying `reserved` (`Prefer: wait=5`, open loop, from the "
            "intended send time); (db) = `decided_at_ms - accepted_at_ms`. confirmed = "
            "`updated_at_ms - accepted_at_ms` of confirmed purchases (POST -> payment settled). "
            "confirmed/s to last = confirmed / (last confirmation - load start). Latencies in ms; "
            "CPU % of one core over the load window (the gateway keeps paying after it: see CPU s).", ""]
    rows = []
    for run, f in paid:
        rows.append([run.phases[0].system if run.phases else run.system, f.purchases,
                     ", ".join(f"{k} {v:,}" for k, v in f.by_status.items()),
                     ", ".join(f"{k} {v:,}" for k, v in sorted(f.psp_stats.items())),
                     ", ".join(f"{k} {v:g}" for k, v in f.cpu_s.items())])
    out.append(render_table(["system", "purchases", "final status", "fake PSP stats", "CPU s (whole run)"],
                            rows))
    out += ["", "Money (the last six must be 0):", ""]
    rows = [[run.phases[0].system if run.phases else run.system, f.confirmed, f.captures, f.ledger_intents,
             f.refunded_intents, f.captured_twice, f.confirmed_without_capture, f.captured_not_confirmed,
             f.still_reserved, f.stock_not_returned, f.oversold,
             ", ".join(f"{k} {v}" for k, v in f.reconcile.items() if v and k != "duration_s") or "-"]
            for run, f in paid]
    out.append(render_table(["system", "confirmed", "captures", "ledger intents", "refunded",
                             "captured twice", "confirmed w/o its capture", "captured not confirmed",
                             "still reserved", "stock not returned", "oversold",
                             "reconcile dry run (non-zero)"], rows))
    return out
