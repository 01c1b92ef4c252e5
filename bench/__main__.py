"""`python -m bench [--quick] [--scenarios ...] [--systems ...] [--shards 1,2,4] [--duration-s N]`

Starts embedded NATS + PostgreSQL under a temp dir, then for every scenario and system: starts
the system as real processes, seeds its SKUs, runs the phases, drains, checks the invariants in
Postgres and stops it. Writes bench/results/<timestamp>/ (results.json, report.md, *.png).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import msgspec
import psutil

from bench import plots
from bench.buyers import skipped_limits, verify_cost_us
from bench.disk import Probe
from bench.paid import PAID_RATE, PAID_SKU, PAID_STOCK, PAID_TOKENS, FlashsalePaid
from bench.report import RunResult, headline, render_report
from bench.runner import PhasePlan, SystemRun, db_figures, py_spy, run_phase, wrk_available
from bench.systems import REDIS_LOSES, Baseline, Flashsale, Place, RedisSeckill, System
from flashsale.embedded import start_nats, start_postgres
from flashsale.testing import Process

SCENARIOS = ["hot-sku", "accepted", "many-skus", "retry-storm", "paid"]
# --quick leaves out `paid` (~10 s more) to stay short; the full run has it (~17 s).
QUICK_SCENARIOS = ["hot-sku", "accepted", "many-skus", "retry-storm"]
SYSTEMS = ["echo", "naive", "rowlock", "redis-always", "redis-everysec", "flashsale"]
SYSTEM_ALIASES = {"redis": ["redis-always", "redis-everysec"]}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
HOT_STOCK = 1_000  # far below demand: a few hundred ms of load sells it out
# The accepted path: stock far above any demand, so every request becomes an order.
ACCEPTED_STOCK = 100_000_000
# Buyers reused in the accepted path's `max-repeat` phase: their tokens are verified once, then
# cached, so against `max` (a new buyer, a new token, per request) it shows what verifying costs.
REPEAT_BUYERS = 1_000
# Closed-loop answers/s to mint buyer tokens for (flashsale's sold-out fast path is the fastest
# thing measured; the others are far slower). Past them requests repeat earlier clicks.
RATE_GUESS = {"flashsale": 25_000.0}
RATE_GUESS_DEFAULT = 12_000.0
MANY_SKUS = 1_000
MANY_STOCK = 100_000  # per SKU: never sells out, so many-skus measures the full accept path
STORM_SKUS = 100
STORM_STOCK = 100  # per SKU: sells out part-way, so retries meet both accepts and sell-outs
SAMPLER_RATE = 20.0  # buyers/s who wait for their decision beside a closed-loop max phase
DRAIN_TIMEOUT_S = 60.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short phases, fewer runs (development)")
    ap.add_argument("--scenarios", default=None,
                    help=f"comma list of {SCENARIOS} (default: all; with --quick all but paid)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {SYSTEMS}")
    ap.add_argument("--shards", default=None, help="committer counts for the many-skus sweep (default 1,2,4)")
    ap.add_argument("--ingests", type=int, default=1,
                    help="flashsale ingest processes sharing the port (SO_REUSEPORT)")
    ap.add_argument("--hot-shards", type=int, default=2, help="committers for hot-sku and retry-storm")
    ap.add_argument("--duration-s", type=float, default=None, help="seconds per phase (default 10; quick 3)")
    ap.add_argument("--fractions", default=None,
                    help="open-loop rates as fractions of the max (default 0.25,0.5,0.8,1.0; quick 0.8)")
    ap.add_argument("--connections", type=int, default=64, help="closed-loop connections")
    ap.add_argument("--paid-rate", type=float, default=PAID_RATE,
                    help=f"paid scenario: buyers/s, open loop (default {PAID_RATE:g})")
    ap.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    ap.add_argument("--flushes", choices=["auto", "device", "strace", "none"], default="auto",
                    help="disk flush counts: the block device's counter (auto when it exists), "
                         "strace -f -c of the syncing processes (slows them), or none")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy flame graphs of flashsale's processes during its max phases "
                         "(pip install py-spy)")
    ap.add_argument("--out", default=None, help="results directory (default bench/results/<timestamp>)")
    args = ap.parse_args(argv)
    if args.scenarios is None:
        args.scenarios = ",".join(QUICK_SCENARIOS if args.quick else SCENARIOS)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.systems = [x for s in args.systems.split(",") if s for x in SYSTEM_ALIASES.get(s, [s])]
    for s in args.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}")
    for s in args.systems:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s!r}")
    args.shards = [int(x) for x in (args.shards or ("1,2" if args.quick else "1,2,4")).split(",")]
    args.duration_s = args.duration_s or (3.0 if args.quick else 10.0)
    fractions = args.fractions or ("0.8" if args.quick else "0.25,0.5,0.8,1.0")
    args.fractions = [float(x) for x in fractions.split(",")]
    if args.generator == "auto":
        args.generator = "wrk" if wrk_available() else "python"
    elif args.generator == "wrk" and not wrk_available():
        ap.error("wrk not found (apt-get install wrk), or use --generator python")
    if args.profile and py_spy() is None:
        ap.error("--profile needs py-spy (pip install py-spy)")
    return args


def plan_systems(scenario: str, args: argparse.Namespace) -> list[tuple[str, int | None]]:
    out: list[tuple[str, int | None]] = []
    if scenario == "paid":
        # The baselines have no payment path: flashsale only.
        return [("flashsale", args.hot_shards)] if "flashsale" in args.systems else []
    for name in args.systems:
        if name == "echo" and scenario not in ("hot-sku", "accepted"):
            continue  # echo keeps no state: only its HTTP limit on the headline scenarios means anything
        if name in ("rowlock", "redis-always", "redis-everysec") and args.quick and scenario not in (
                "hot-sku", "accepted"):
            continue  # quick mode: keep it short
        if name == "flashsale":
            for shards in (args.shards if scenario == "many-skus" else [args.hot_shards]):
                out.append((name, shards))
        else:
            out.append((name, None))
    return out


def phases_for(scenario: str, system: str,
               args: argparse.Namespace) -> tuple[dict[str, int], list[PhasePlan]]:
    """(stock by SKU to seed, phases). Each hot-sku phase gets its own fresh hot SKU, so every
    phase starts with stock to sell and then sells out."""
    d, wrk = args.duration_s, args.generator == "wrk"
    sampler = 0.0 if system == "echo" else SAMPLER_RATE
    guess = RATE_GUESS.get(system, RATE_GUESS_DEFAULT)
    # echo verifies nothing: a small pool of tokens, reused, sends the same bytes.
    echo_pool = REPEAT_BUYERS if system == "echo" else 0
    if scenario == "accepted":
        # One hot SKU per phase that never sells out, a new buyer per request: every request
        # becomes an order, so this is the accepted path (publish + fsync, decide, commit).
        n_skus = 2 + len(args.fractions)
        stock = {f"acc-{i}": ACCEPTED_STOCK for i in range(n_skus)}
        plans = [PhasePlan("max", "closed", ["acc-0"], d, connections=args.connections,
                           sampler_rate=sampler, use_wrk=wrk, rate_guess=guess, repeat_buyers=echo_pool)]
        if system == "flashsale":
            plans.append(PhasePlan("max-repeat", "closed", [f"acc-{n_skus - 1}"], d,
                                   connections=args.connections, sampler_rate=sampler, use_wrk=wrk,
                                   repeat_buyers=REPEAT_BUYERS))
        wait_every = 0 if system == "echo" else 10
        plans += [PhasePlan(f"open@{f:g}", "open", [f"acc-{i + 1}"], d, wait_every=wait_every,
                            repeat_buyers=echo_pool)
                  for i, f in enumerate(args.fractions)]
        return stock, plans
    if scenario == "hot-sku":
        stock = {f"hot-{i}": HOT_STOCK for i in range(1 + len(args.fractions))}
        plans = [PhasePlan("max", "closed", ["hot-0"], d, connections=args.connections,
                           sampler_rate=sampler, use_wrk=wrk, rate_guess=guess, repeat_buyers=echo_pool)]
        # echo decides nothing: no request of its open-loop phases waits for a decision.
        wait_every = 0 if system == "echo" else 10
        plans += [PhasePlan(f"open@{f:g}", "open", [f"hot-{i + 1}"], d, wait_every=wait_every,
                            repeat_buyers=echo_pool)
                  for i, f in enumerate(args.fractions)]
        return stock, plans
    if scenario == "many-skus":
        skus = [f"m-{i:04d}" for i in range(MANY_SKUS)]
        # open@0.8 here measures decisions on the full accept path (publish, commit, result),
        # where hot-sku's open phases are mostly answered by the sold-out fast path.
        return ({s: MANY_STOCK for s in skus},
                [PhasePlan("max", "closed", skus, d, connections=args.connections, sampler_rate=sampler,
                           use_wrk=wrk, rate_guess=guess),
                 PhasePlan("open@0.8", "open", skus, d)])
    if scenario == "paid":
        # Every buyer waits for the decision (`reserved`); the payment outcome comes from the DB.
        return {PAID_SKU: PAID_STOCK}, [PhasePlan("paid", "open", [PAID_SKU], d, rate=args.paid_rate,
                                                  wait_every=1, payment_tokens=PAID_TOKENS)]
    skus = [f"storm-{i:03d}" for i in range(STORM_SKUS)]
    return {s: STORM_STOCK for s in skus}, [PhasePlan("retry", "retry", skus, d, connections=64,
                                                      rate_guess=guess)]


def machine_info() -> dict[str, str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "ram": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "load avg at start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    }


async def run_system(sut: System, scenario: str, args: argparse.Namespace, work: Path, n: int,
                     out_dir: Path, probe: Probe) -> SystemRun:
    stock, plans = phases_for(scenario, sut.name, args)
    run = SystemRun(scenario=scenario, system=sut.label(), shards=getattr(sut, "shards", None))
    await sut.seed(stock)
    ids: set[str] = set()
    max_rate: float | None = None
    for plan in plans:
        if plan.mode == "open" and plan.rate is None:
            if not max_rate:
                continue
            plan.rate = round(max_rate * float(plan.phase.split("@")[1]), 1)
        profile = args.profile and sut.name == "flashsale" and plan.phase == "max"
        tag = f"r{n}{plan.phase.replace('@', '').replace('-', '')}"
        result, phase_ids = await run_phase(sut, scenario, plan, work, tag, probe, DRAIN_TIMEOUT_S,
                                            out_dir if profile else None)
        if plan.phase == "max":
            max_rate = result.answered_per_s
        ids |= phase_ids
        run.drained = result.drained and run.drained
        await db_figures(sut, result)
        run.phases.append(result)
    if isinstance(sut, FlashsalePaid) and run.phases:
        run.paid = await sut.paid_figures(run.phases[0].started_ms, run.phases[0].ended_ms)
    repeat_skus = [sku for plan in plans if plan.repeat_buyers for sku in plan.skus]
    run.invariants = await sut.invariants(ids, sum(stock.values()), repeat_skus)
    run.invariants.id_mismatch = sum((p.retry or {}).get("id_mismatch", 0) for p in run.phases)
    return run


async def launch_system(place: Place, processes: list[Process], shards: int | None, ingests: int = 1,
                        scenario: str = "") -> System:
    """Starts one system under test; every process it starts is in `processes`, even on failure."""
    if place.name == "flashsale" and scenario == "paid":
        return await FlashsalePaid.launch_paid(place, processes, shards or 1, ingests)
    if place.name == "flashsale":
        return await Flashsale.launch(place, processes, shards or 1, ingests)
    if place.name == "redis-always":
        return await RedisSeckill.launch_redis(place, processes, "always")
    if place.name == "redis-everysec":
        return await RedisSeckill.launch_redis(place, processes, "everysec")
    return await Baseline.launch(place, processes)


def write_outputs(result: RunResult, out_dir: Path) -> None:
    result.headline = headline(result.runs)
    (out_dir / "results.json").write_bytes(msgspec.json.format(msgspec.json.encode(result)))
    made = plots.write_all(result.runs, out_dir)
    report = render_report(result)
    if made:
        report += "\n## Plots\n\n" + "\n".join(f"![{m}]({m})" for m in made) + "\n"
    (out_dir / "report.md").write_text(report)


async def amain(args: argparse.Namespace) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out) if args.out else RESULTS_DIR / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="flashsale-bench-"))
    work = root / "gen"
    work.mkdir()
    probe = Probe.choose(root, args.flushes)
    fresh_us, cached_us = verify_cost_us()
    result = RunResult(
        started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        command=" ".join(["python -m bench", *map(shlex.quote, sys.argv[1:])]),
        machine=machine_info(),
        settings={
            "postgres": "16 (pgserver wheel), fsync=on, synchronous_commit=on, full_page_writes=on, "
                        "shared_buffers=256MB",
            # What config/nats.conf asks for; whether the embedded launcher keeps it shows in the
            # flushes per accepted purchase (>= 1 when every intent is fsynced before its 202).
            "nats": "JetStream file storage, config/nats.conf asks sync_interval=always",
            "generator": args.generator + ("" if args.generator == "wrk" else
                                           " (wrk not installed: Python generator for closed loop)"),
            "phase seconds": f"{args.duration_s:g}",
            "closed-loop connections": str(args.connections),
            "buyers": "JWT (HS256) per buyer, verified by ingest.auth.BuyerVerifier in flashsale, naive, "
                      "rowlock and redis (echo ignores it); a new buyer per click unless the phase says "
                      "repeat",
            "token verification (in-process)": f"new token {fresh_us:.1f} us, already verified "
                                               f"{cached_us:.2f} us",
            "disk flushes": probe.why,
            "redis": "; ".join(f"redis-{k}: loses {v}" for k, v in REDIS_LOSES.items()),
        },
    )
    result.verify_us = {"new": round(fresh_us, 2), "cached": round(cached_us, 3)}
    if skipped_limits():
        result.notes.append("settings not in this checkout, so not turned off: "
                            + ", ".join(skipped_limits()))
    if {"redis-always", "redis-everysec"} & set(args.systems) and shutil.which("redis-server") is None:
        result.notes.append("redis-server not installed (apt-get install redis-server): redis skipped")
        args.systems = [s for s in args.systems if not s.startswith("redis-")]
    if "flashsale" in args.systems and importlib.util.find_spec("ingest.__main__") is None:
        result.notes.append("flashsale not runnable here (no `python -m ingest`): skipped")
        args.systems = [s for s in args.systems if s != "flashsale"]
    print(f"bench: servers under {root}, results in {out_dir}", file=sys.stderr)
    nats = start_nats(root / "nats")
    pg = start_postgres(root / "pg")
    if "paid" in args.scenarios and set(args.systems) - {"flashsale"}:
        result.notes.append("paid: flashsale only (echo, naive and rowlock have no payment path)")
    n = 0
    try:
        for scenario in args.scenarios:
            for name, shards in plan_systems(scenario, args):
                n += 1
                processes: list[Process] = []
                sut: System | None = None
                try:
                    sut = await launch_system(Place(name, root, pg, nats), processes, shards,
                                              args.ingests, scenario)
                    result.runs.append(await run_system(sut, scenario, args, work, n, out_dir, probe))
                except Exception as e:  # one broken system must not lose the others' figures
                    traceback.print_exc()
                    label = sut.label() if sut is not None else name
                    result.notes.append(f"{scenario} {label} failed: {type(e).__name__}: {e}")
                finally:
                    if sut is not None:
                        await sut.close()
                    for p in reversed(processes):
                        p.stop()
                write_outputs(result, out_dir)  # after every system: a crash keeps what was measured
    finally:
        nats.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    write_outputs(result, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import uvloop

    uvloop.install()
    started = time.monotonic()
    out_dir = asyncio.run(amain(args))
    print((out_dir / "report.md").read_text())
    print(f"bench: done in {time.monotonic() - started:.0f}s -> {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
