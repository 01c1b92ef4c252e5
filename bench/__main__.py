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
from dataclasses import dataclass
from pathlib import Path

import msgspec
import psutil

from bench import plots
from bench.baseline_systems import REDIS_LOSES, Baseline, RedisSeckill
from bench.buyers import bench_settings, choose_settings, skipped_limits, verify_cost_us
from bench.disk import Probe
from bench.drop import DROP_BUYERS, DROP_STOCK, QUICK_BUYERS, QUICK_STOCK, run_drop
from bench.flashsale_system import Flashsale
from bench.generators import wrk_available
from bench.headline import headline
from bench.paid import PAID_RATE, FlashsalePaid
from bench.plans import is_max, phases_for, plan_systems
from bench.report import render_report
from bench.results import RunResult, SystemRun
from bench.runner import Profiling, db_figures, py_spy, run_phase
from bench.systems import NatsServers, Place, System
from flashsale.supervision import ingest_count
from launch.cluster import start_cluster
from launch.embedded import Embedded
from launch.nats_server import start_nats
from launch.postgres_server import start_postgres
from launch.processes import Process

SCENARIOS = ["hot-sku", "accepted", "many-skus", "retry-storm", "paid", "drop"]
# --quick leaves out `paid` (~10 s more) and `drop` to stay short; the full run has them.
QUICK_SCENARIOS = ["hot-sku", "accepted", "many-skus", "retry-storm"]
SYSTEMS = ["echo", "naive", "rowlock", "redis-always", "redis-everysec", "flashsale"]
SYSTEM_ALIASES = {"redis": ["redis-always", "redis-everysec"]}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DRAIN_TIMEOUT_S = 60.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short phases, fewer runs (development)")
    ap.add_argument("--scenarios", default=None,
                    help=f"comma list of {SCENARIOS} (default: all; with --quick all but paid)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {SYSTEMS}")
    ap.add_argument("--shards", default=None, help="committer counts for the many-skus sweep (default 1,2,4)")
    ap.add_argument("--ingests", type=int, default=None,
                    help="flashsale ingest processes sharing the port (SO_REUSEPORT); default as "
                         "under `flashsale dev`: the ingest_processes setting's rule for this box")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="settings",
                    help="a flashsale setting (config/settings.py) for every system of the run, "
                         "e.g. --set ingest_linger_ms=5 or --set lean_purchases=false; repeatable, "
                         "named in the report")
    ap.add_argument("--nats-cluster", default="1",
                    help="NATS nodes flashsale runs on, a comma list: 1 = the embedded single node "
                         "(R1, fsync before each ack), 3 = a local cluster with R3 streams; "
                         "flashsale runs once per entry")
    ap.add_argument("--hot-shards", type=int, default=2, help="committers for hot-sku and retry-storm")
    ap.add_argument("--duration-s", type=float, default=None, help="seconds per phase (default 10; quick 3)")
    ap.add_argument("--fractions", default=None,
                    help="open-loop rates as fractions of the max (default 0.25,0.5,0.8,1.0; quick 0.8)")
    ap.add_argument("--connections", default="64",
                    help="closed-loop connections, a comma list: every scenario's `max` at the first; "
                         "the accepted path also at each further one (phase max-c<N>)")
    ap.add_argument("--paid-rate", type=float, default=PAID_RATE,
                    help=f"paid scenario: buyers/s, open loop (default {PAID_RATE:g})")
    ap.add_argument("--drop-buyers", type=int, default=None,
                    help=f"drop scenario: buyers (default {DROP_BUYERS:,}; quick {QUICK_BUYERS:,})")
    ap.add_argument("--drop-stock", type=int, default=None,
                    help=f"drop scenario: units (default {DROP_STOCK:,}; quick {QUICK_STOCK:,})")
    ap.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    ap.add_argument("--flushes", choices=["auto", "device", "strace", "none"], default="auto",
                    help="disk flush counts: the block device's counter (auto when it exists), "
                         "strace -f -c of the syncing processes (slows them), or none")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy flame graphs of flashsale's processes during its max phases "
                         "(py-spy, in the bench extras)")
    ap.add_argument("--profile-rate-hz", type=int, default=100,
                    help="--profile: py-spy samples per second (default 100)")
    ap.add_argument("--profile-format", choices=["flamegraph", "raw"], default="flamegraph",
                    help="--profile: SVG flame graphs, or raw collapsed stacks (.txt) to sum")
    ap.add_argument("--out", default=None, help="results directory (default bench/results/<timestamp>)")
    return _resolve(ap, ap.parse_args(argv))


def _resolve(ap: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The parsed options as lists and numbers, with --quick's and the box's defaults filled in;
    an unknown or impossible one ends the command (ap.error)."""
    if args.scenarios is None:
        args.scenarios = ",".join(QUICK_SCENARIOS if args.quick else SCENARIOS)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.drop_buyers = args.drop_buyers or (QUICK_BUYERS if args.quick else DROP_BUYERS)
    args.drop_stock = args.drop_stock or (QUICK_STOCK if args.quick else DROP_STOCK)
    args.systems = [x for s in args.systems.split(",") if s for x in SYSTEM_ALIASES.get(s, [s])]
    for s in args.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}")
    for s in args.systems:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s!r}")
    args.shards = [int(x) for x in (args.shards or ("1,2" if args.quick else "1,2,4")).split(",")]
    args.connections = [int(x) for x in args.connections.split(",") if x]
    args.nats_cluster = [int(x) for x in args.nats_cluster.split(",") if x]
    if min(args.connections or [0]) < 1 or min(args.nats_cluster or [0]) < 1:
        ap.error("--connections and --nats-cluster need counts of at least 1")
    try:
        choose_settings(args.settings)
    except ValueError as exc:  # SettingsError is one
        ap.error(f"--set: {exc}")
    if args.ingests is None:
        args.ingests = ingest_count(bench_settings())
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
    run = SystemRun(scenario=scenario, system=sut.label(), shards=getattr(sut, "shards", None))
    if scenario == "drop" and isinstance(sut, Flashsale):
        run.drop, accepted, skus = await run_drop(sut.base_url, sut.settings.admin_token,
                                                  sut.database_url, args.drop_buyers, args.drop_stock)
        run.invariants = await sut.invariants(accepted, 2 * args.drop_stock, skus)
        return run
    stock, plans = phases_for(scenario, sut.name, args)
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
        profiling = Profiling(out_dir, args.profile_rate_hz, args.profile_format) if profile else None
        result, phase_ids = await run_phase(sut, scenario, plan, work, tag, probe, DRAIN_TIMEOUT_S,
                                            profiling)
        if is_max(plan.phase):
            max_rate = max(max_rate or 0.0, result.answered_per_s)
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


@dataclass
class Session:
    """One `python -m bench` run: its arguments, what it measured so far and where things are."""

    args: argparse.Namespace
    result: RunResult
    root: Path  # temp dir of the servers and systems, removed at the end
    out_dir: Path
    probe: Probe

    @property
    def work(self) -> Path:
        return self.root / "gen"  # generators' tokens and result files


async def amain(args: argparse.Namespace) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out) if args.out else RESULTS_DIR / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="flashsale-bench-"))
    (root / "gen").mkdir()
    probe = Probe.choose(root, args.flushes)
    session = Session(args, new_result(args, probe), root, out_dir, probe)
    skip_unavailable(args, session.result)
    print(f"bench: servers under {root}, results in {out_dir}", file=sys.stderr)
    nats = start_nats(root / "nats")
    clusters = [start_cluster(root / f"nats-cluster{n}", n) for n in sorted(set(args.nats_cluster) - {1})]
    pg = start_postgres(root / "pg")
    servers = {1: NatsServers.single(nats), **{len(c.nodes): NatsServers.of_cluster(c) for c in clusters}}
    if "paid" in args.scenarios and set(args.systems) - {"flashsale"}:
        session.result.notes.append("paid: flashsale only (echo, naive and rowlock have no payment path)")
    if "drop" in args.scenarios and set(args.systems) - {"flashsale"}:
        session.result.notes.append("drop: flashsale only (the baselines have no draw)")
    try:
        await run_all(session, pg, servers)
    finally:
        nats.stop()
        for c in clusters:
            c.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    write_outputs(session.result, out_dir)
    return out_dir


def new_result(args: argparse.Namespace, probe: Probe) -> RunResult:
    """The run's header: command, machine, and the settings every figure was measured with."""
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
            "closed-loop connections": ",".join(map(str, args.connections)),
            "ingest processes (flashsale)": str(args.ingests),
            "settings given (--set)": ", ".join(args.settings) or "none",
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
    return result


def skip_unavailable(args: argparse.Namespace, result: RunResult) -> None:
    """Drops the systems this machine cannot run from `args.systems`, with a note why."""
    if {"redis-always", "redis-everysec"} & set(args.systems) and shutil.which("redis-server") is None:
        result.notes.append("redis-server not installed (apt-get install redis-server): redis skipped")
        args.systems = [s for s in args.systems if not s.startswith("redis-")]
    if "flashsale" in args.systems and importlib.util.find_spec("ingest.__main__") is None:
        result.notes.append("flashsale not runnable here (no `python -m ingest`): skipped")
        args.systems = [s for s in args.systems if s != "flashsale"]


async def run_all(session: Session, pg: Embedded, nats: dict[int, NatsServers]) -> None:
    """Every planned system of every scenario, in turn; `nats`: the servers by node count."""
    n = 0
    for scenario in session.args.scenarios:
        for planned in plan_systems(scenario, session.args):
            n += 1
            place = Place(planned.name, session.root, pg, nats[planned.nats_nodes])
            await run_one(session, place, planned.shards, scenario, n)
            # After every system: a crash keeps what was measured.
            write_outputs(session.result, session.out_dir)


async def run_one(session: Session, place: Place, shards: int | None, scenario: str, n: int) -> None:
    """Starts one system, runs the scenario against it and stops it; a failure becomes a note."""
    args, result = session.args, session.result
    processes: list[Process] = []
    sut: System | None = None
    try:
        sut = await launch_system(place, processes, shards, args.ingests, scenario)
        result.runs.append(await run_system(sut, scenario, args, session.work, n, session.out_dir,
                                            session.probe))
    except Exception as e:  # one broken system must not lose the others' figures
        traceback.print_exc()
        label = sut.label() if sut is not None else place.name
        result.notes.append(f"{scenario} {label} failed: {type(e).__name__}: {e}")
    finally:
        if sut is not None:
            await sut.close()
        for p in reversed(processes):
            p.stop()


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
