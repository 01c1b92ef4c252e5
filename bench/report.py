"""results.json -> report.md: the whole report, in order, and its general tables (throughput and
latency, flushes, group commit, invariants, CPU, notes). Pure functions (no I/O); the accepted
path and each scenario's own sections have modules of their own."""

from __future__ import annotations

from collections.abc import Sequence

from bench.headline import flushes_per_accepted
from bench.markdown import fmt, lat, render_table, section, verdict
from bench.report_accepted import render_accepted
from bench.report_scenarios import (
    render_drop,
    render_paid,
    render_retry,
    render_sellout_targets,
    render_streams,
)
from bench.results import PhaseResult, RunResult, SystemRun


def render_report(result: RunResult) -> str:
    h = result.headline
    out = [f"# flashsale benchmark - {result.started}", "", f"Command: `{result.command}`", ""]
    out.append("Machine: " + ", ".join(f"{k}: {v}" for k, v in result.machine.items()))
    out.append("")
    out.append("Settings: " + ", ".join(f"{k}: {v}" for k, v in result.settings.items()))
    out += ["", f"Invariant violations, all scenarios and systems: {h.invariant_violations} "
            f"({verdict(h.invariant_violations == 0)}; must be 0, table below)."]
    out += render_accepted(result)
    if any(run.scenario in ("hot-sku", "many-skus") for run in result.runs):
        out += ["", "## Sell-out and many-SKU targets", "",
                "hot-sku: the hot SKU sells out in the first second; from then on flashsale and redis "
                "answer `409 sold_out` without creating a purchase (naive and rowlock answer 200 "
                "`rejected` after a transaction). Reported apart from the accepted path: most answers "
                "here are not orders.", ""]
        out += render_sellout_targets(h)
    out += render_streams(result.runs)
    out += ["", *render_body(result)]
    return "\n".join(out) + "\n"


def render_body(result: RunResult) -> list[str]:
    """Every table after the headlines, then the notes."""
    runs = result.runs
    return [*render_throughput(runs), *render_flushes(runs), *render_group_commit(runs),
            *render_invariants(runs), *render_retry(runs), *render_paid(runs), *render_drop(runs),
            *render_cpu(runs), *render_notes(result)]


def render_throughput(runs: Sequence[SystemRun]) -> list[str]:
    out = ["## Throughput and latency", "",
           "acc = POST -> answer (2xx or 409 sold out); dec = POST -> answer carrying the decided "
           "state (`Prefer: wait`, a synchronous baseline's 200, or 409 sold out); "
           "decision (db) = `decided_at_ms - accepted_at_ms` in Postgres. "
           "`max` phases are closed loop (wrk latencies suffer coordinated omission); `open@F` "
           "phases are open loop at F x the max, latency from the intended send time. "
           "Latencies in ms.", ""]
    rows = [[run.scenario, p.system, p.phase, p.generator, p.offered_rate, p.answered_per_s,
             p.accepted_per_s, p.decisions_per_s, *lat(p.accept), *lat(p.decision),
             p.decision_db.p99, p.statuses.get("409"), _errors(p)]
            for run in runs for p in run.phases]
    out.append(render_table(
        ["scenario", "system", "phase", "gen", "offered/s", "answered/s", "accepted/s", "decisions/s",
         "acc p50", "acc p95", "acc p99", "acc max", "dec p50", "dec p95", "dec p99", "dec max",
         "dec p99 (db)", "409 sold out", "errors"], rows))
    return out


def render_invariants(runs: Sequence[SystemRun]) -> list[str]:
    rows = []
    for run in runs:
        i = run.invariants
        rows.append([run.scenario, run.phases[0].system if run.phases else run.system, i.oversold_skus,
                     i.duplicate_orders, i.lost, i.id_mismatch, i.accepted_ids, i.rows, i.sold, i.stock,
                     "yes" if run.drained else "**no**"])
    return ["", "## Invariants (must all be 0)", "",
            render_table(["scenario", "system", "oversold SKUs", "duplicate orders", "lost",
                          "id mismatch", "ids answered 2xx", "rows", "sold", "stock", "drained"], rows)]


def render_cpu(runs: Sequence[SystemRun]) -> list[str]:
    names: list[str] = []
    for p in (p for run in runs for p in run.phases):
        names += [n for n in p.cpu_pct if n not in names]
    rows = [[run.scenario, p.system, p.phase, p.box_busy_pct, p.steal_pct, *(p.cpu_pct.get(n) for n in names)]
            for run in runs for p in run.phases]
    return ["", "## CPU per process (% of one core, over the load window)", "",
            "box busy = all cores of the box, % busy; steal = % taken by the hypervisor for other "
            "guests (neighbours' load: figures with high steal are noisy).", "",
            render_table(["scenario", "system", "phase", "box busy %", "steal %", *names], rows)]


def render_notes(result: RunResult) -> list[str]:
    notes = list(result.notes)
    for run in result.runs:
        for p in run.phases:
            notes += [f"{run.scenario} {p.system} {p.phase}: {n}" for n in p.notes]
            if p.gen_lag_p99_ms is not None and p.gen_lag_p99_ms > 10:
                notes.append(f"{run.scenario} {p.system} {p.phase}: requests went out late (p99 "
                             f"{p.gen_lag_p99_ms:.1f} ms: generator CPU, or all its connections "
                             "busy); latency counts from the intended send time")
    return ["", "## Notes", "", *(f"- {n}" for n in notes)] if notes else []


def render_group_commit(runs: Sequence[SystemRun]) -> list[str]:
    """Where a 202 waits: flashsale's intent batches beside the time to the answer."""
    rows = [[run.scenario, p.system, p.phase, p.accepted_per_s, g.batches_per_s, g.intents_per_batch,
             g.store_ms_per_batch, g.commits_per_s, g.intents_per_commit, p.accept.p50]
            for run in runs for p in run.phases if (g := p.group_commit) is not None]
    return section(
        "Group commit (flashsale's intent batches)",
        "From ingest's own counters over the load window: batches of intents sent to JetStream "
        "per second, intents per batch, and the mean time from a batch's first publish to "
        "JetStream's answer (the stored batch, fsynced); the committers' batches (one Postgres "
        "transaction each, all shards) from their own histogram; the POST -> 202 median (ms).",
        ["scenario", "system", "phase", "accepted/s", "batches/s", "intents / batch",
         "store ms / batch", "commits/s", "intents / commit", "acc p50"], rows)


def render_flushes(runs: Sequence[SystemRun]) -> list[str]:
    rows = []
    for run in runs:
        for p in run.phases:
            f = p.flush
            if f is None or f.source == "none":
                continue
            per_flush = (f.flush_ms / f.flushes) if f.flush_ms is not None and f.flushes else None
            rows.append([run.scenario, p.system, p.phase, p.accepted, f.flushes,
                         None if not f.window_s else round((f.flushes or 0) / f.window_s, 1),
                         fmt(flushes_per_accepted(p), 3), f.idle_per_s, fmt(per_flush, 3),
                         ", ".join(f"{k} {v:,}" for k, v in f.by_process.items()) or f.source])
    return section(
        "Disk flushes",
        "From the load's start to the end of the drain. idle/s = the device's flushes per second "
        "just before the load (other processes on the disk: the noise floor); ms/flush = the "
        "device's time flushing / flushes (field 17).",
        ["scenario", "system", "phase", "accepted", "flushes", "flushes/s", "flushes / accepted",
         "idle/s", "ms/flush", "source"], rows)


def _errors(p: PhaseResult) -> str:
    bad = {k: v for k, v in p.statuses.items() if not k.startswith("2") and k != "409"}
    bad.update(p.errors)
    return ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())) or "0"
