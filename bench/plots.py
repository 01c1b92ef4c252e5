"""PNG plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.results import SystemRun


def _gap(ms: float | None) -> float:
    """A missing figure as NaN, which matplotlib draws as a gap in the line."""
    return math.nan if ms is None else ms


def latency_vs_rate(runs: list[SystemRun], path: Path, scenario: str = "hot-sku") -> bool:
    """p50 and p99 latency against offered rate, from the open-loop phases."""
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = False
    for run in runs:
        if run.scenario != scenario:
            continue
        pts = sorted((p.offered_rate, p.decision if p.decision.count else p.accept)
                     for p in run.phases if p.mode == "open" and p.offered_rate)
        if not pts:
            continue
        xs = [x for x, _ in pts]
        (line,) = ax.plot(xs, [_gap(s.p99) for _, s in pts], marker="o", label=f"{run.phases[0].system} p99")
        ax.plot(xs, [_gap(s.p50) for _, s in pts], marker=".", linestyle="--", color=line.get_color(),
                label=f"{run.phases[0].system} p50")
        drawn = True
    if drawn:
        ax.set_xlabel("offered rate (requests/s, open loop)")
        ax.set_ylabel("latency to decision (ms; echo: to 202)")
        ax.set_yscale("log")
        ax.axhline(100, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(f"{scenario}: latency vs offered rate")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def throughput_over_time(runs: list[SystemRun], path: Path, phase: str = "max") -> bool:
    """Definitive answers (2xx + 409 sold out) per second and, dashed, decisions per second
    from Postgres; one panel per scenario."""
    scenarios = [sc for sc in dict.fromkeys(r.scenario for r in runs)
                 if any(p.phase == phase and p.answered_per_second for r in runs if r.scenario == sc
                        for p in r.phases)]
    if not scenarios:
        return False
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(8, 3.5 * len(scenarios)), squeeze=False)
    for ax, scenario in zip(axes[:, 0], scenarios, strict=True):
        for run in runs:
            if run.scenario != scenario:
                continue
            for p in run.phases:
                if p.phase != phase or not p.answered_per_second:
                    continue
                (line,) = ax.plot(range(len(p.answered_per_second)), p.answered_per_second,
                                  label=f"{p.system} answered")
                if p.decided_per_second:
                    ax.plot(range(len(p.decided_per_second)), p.decided_per_second, linestyle="--",
                            color=line.get_color(), label=f"{p.system} decided (db)")
        ax.set_title(f"{scenario}: throughput over time ({phase} phase)")
        ax.set_xlabel("seconds since phase start")
        ax.set_ylabel("per second")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def shard_sweep(runs: list[SystemRun], path: Path, scenario: str = "many-skus") -> bool:
    """flashsale accepted/s by committer count, with the baselines as horizontal lines."""
    fs = sorted((r.shards, p.accepted_per_s, p.decisions_per_s or 0.0)
                for r in runs if r.scenario == scenario and r.shards
                for p in r.phases if p.phase == "max")
    if not fs:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [str(s) for s, _, _ in fs]
    ax.bar(xs, [a for _, a, _ in fs], label="flashsale accepted/s", alpha=0.8)
    ax.plot(xs, [d for _, _, d in fs], marker="o", color="black", label="flashsale decisions/s")
    for r in runs:
        if r.scenario == scenario and not r.shards:
            for p in r.phases:
                if p.phase == "max":
                    ax.axhline(p.accepted_per_s, linestyle=":", label=f"{p.system} accepted/s")
    ax.set_xlabel("committer shards")
    ax.set_ylabel("per second")
    ax.set_title(f"{scenario}: shard sweep")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_all(runs: list[SystemRun], out_dir: Path) -> list[str]:
    made = []
    if latency_vs_rate(runs, out_dir / "latency_vs_rate.png"):
        made.append("latency_vs_rate.png")
    if latency_vs_rate(runs, out_dir / "accepted_latency_vs_rate.png", scenario="accepted"):
        made.append("accepted_latency_vs_rate.png")
    if throughput_over_time(runs, out_dir / "throughput_over_time.png"):
        made.append("throughput_over_time.png")
    if shard_sweep(runs, out_dir / "shard_sweep.png"):
        made.append("shard_sweep.png")
    return made
