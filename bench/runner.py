"""Runs the phases of a scenario against one system and measures them.

A phase is one stretch of load: `max` (closed loop, to find the maximum), `open@F` (open loop at
F x that maximum, latency from the intended send time) or `retry` (the retry storm). While a
phase runs, a live line on stderr shows the answer rate, p99, errors and the backlog.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from bench.buyers import write_tokens
from bench.cpu import CpuMark
from bench.disk import Probe, Window
from bench.generators import GenProcess, Live, show_progress, spawn_gen, spawn_wrk
from bench.genspec import GenSpec, Mode
from bench.results import GroupCommit, PhaseResult
from bench.stats import split_rate, summarize
from bench.systems import BatchCounters, System
from bench.tally import Tally, add_generators, add_totals, add_wrk

GEN_PROCESSES = 2  # one per core: more Python processes only fight over the same two cores
# Open-loop connections per generator process. Like the closed loop's 64, so an open phase at
# F x max meets the server with the connection count that max was measured with (aiohttp's
# throughput drops with thousands of connections); when all are busy, requests wait in the
# generator and their latency still counts from the intended send time.
OPEN_CONNECTIONS = 64


@dataclass
class PhasePlan:
    phase: str
    mode: Mode
    skus: list[str]
    duration_s: float
    rate: float | None = None  # open loop, total over all generator processes
    connections: int = 64  # closed loop / retry: total; open loop: of the max it follows
    wait_every: int = 10  # open loop: every Nth request waits for its decision
    stream_every: int = 0  # open loop: every Nth request is followed on its event stream
    sampler_rate: float = 0.0  # closed loop: decision-latency sampler beside the load
    use_wrk: bool = True
    retry_timeout_s: float = 0.03
    payment_tokens: list[str] = field(default_factory=list)  # cycled over requests (paid scenario)
    # Buyers: 0 = a new buyer per click; N = N buyers reused round-robin (their tokens are
    # verified once, then answered from the verifier's cache).
    repeat_buyers: int = 0
    # Closed loop: answers/s to mint tokens for (the rate is not known before the phase); past
    # them requests repeat earlier clicks as retries, and the report says how many.
    rate_guess: float = 12_000.0


def tokens_needed(plan: PhasePlan, spec: GenSpec) -> int:
    """Distinct buyers one generator needs for a phase (bounded in bench.buyers)."""
    if plan.repeat_buyers:
        return plan.repeat_buyers
    if spec.mode == "open":
        return int(spec.rate * spec.duration_s) + 16
    return int(plan.rate_guess * spec.duration_s / GEN_PROCESSES) + 16


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


ProfileFormat = Literal["flamegraph", "raw"]
# What py-spy writes for each format: an SVG flame graph, or collapsed stacks (one line a stack,
# its sample count last) for scripts to sum.
_PROFILE_SUFFIXES: dict[ProfileFormat, str] = {"flamegraph": "svg", "raw": "txt"}


@dataclass(frozen=True)
class Profiling:
    """py-spy profiles of the system's processes: where, how often a second, in which format."""

    out_dir: Path
    rate_hz: int = 100
    format: ProfileFormat = "flamegraph"


async def _start_profiles(sut: System, plan: PhasePlan, profiling: Profiling,
                          prefix: str) -> list[asyncio.subprocess.Process]:
    """py-spy profiles of every Python process of the system over the load window."""
    exe = py_spy()
    if exe is None:
        return []
    spies = []
    suffix = _PROFILE_SUFFIXES[profiling.format]
    for p in sut.processes:
        if p.proc is None:
            continue
        spies.append(await asyncio.create_subprocess_exec(
            exe, "record", "--rate", str(profiling.rate_hz), "--format", profiling.format,
            "--duration", str(max(1, int(plan.duration_s))),
            "--output", str(profiling.out_dir / f"{prefix}-{p.name}.{suffix}"), "--pid", str(p.proc.pid),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        ))
    return spies


async def run_phase(sut: System, scenario: str, plan: PhasePlan, work_dir: Path, tag: str,
                    probe: Probe, drain_timeout_s: float,
                    profiling: Profiling | None = None) -> tuple[PhaseResult, set[str]]:
    """Load, then drain; CPU over the load window, disk flushes from the load's start to the
    end of the drain (the commits of what the load accepted belong to it)."""
    phase = _Phase(sut, scenario, plan, work_dir, tag, Live(f"[{scenario} {sut.label()} {plan.phase}]"))
    # Buyer tokens are minted before the clock starts (a few seconds for a few 100k buyers).
    specs = phase.mint_tokens(phase.gen_specs())
    wrk_tokens = phase.mint_wrk_tokens()
    flushes = Window(probe, sut.syncing_pids())
    await flushes.attach(work_dir)
    batches_before = await sut.batch_counters()
    load = await phase.load(specs, wrk_tokens, flushes, profiling)
    result = phase.result(load)
    result.group_commit = group_commit(batches_before, await sut.batch_counters(), plan.duration_s)
    tally = Tally()
    add_generators(result, tally, load.gens, phase.sink, plan.mode)
    if load.wrk_out is not None:
        add_wrk(result, tally, load.wrk_out)
    add_totals(result, tally, plan.duration_s, sut.name)
    result.drained = await finish_phase(sut, result, drain_timeout_s)
    result.flush = await flushes.stop(time.time())
    for path in [phase.wrk_tokens_path, *(Path(s.tokens_file) for s in specs)]:
        path.unlink(missing_ok=True)
    return result, tally.ids


def group_commit(before: BatchCounters | None, after: BatchCounters | None,
                 duration_s: float) -> GroupCommit | None:
    if before is None or after is None or after.batches <= before.batches:
        return None
    batches = after.batches - before.batches
    commits = after.commits - before.commits
    return GroupCommit(batches_per_s=batches / duration_s,
                       intents_per_batch=(after.intents - before.intents) / batches,
                       store_ms_per_batch=1000 * (after.store_s - before.store_s) / batches,
                       commits_per_s=commits / duration_s if commits > 0 else None,
                       intents_per_commit=((after.committed_intents - before.committed_intents) / commits
                                           if commits > 0 else None))


@dataclass
class _Load:
    """What the load window left: the generators to read, wrk's output and the CPU figures."""

    gens: list[GenProcess]
    wrk_out: bytes | None  # None: no wrk in this phase
    profiled: bool
    start_ms: int
    end_ms: int
    cpu_pct: dict[str, float]
    box_busy_pct: float | None
    steal_pct: float | None


@dataclass
class _Phase:
    """One phase's plan and what its steps share: the live line and the generators' stray output."""

    sut: System
    scenario: str
    plan: PhasePlan
    work_dir: Path
    tag: str
    live: Live
    sink: list[str] = field(default_factory=list)

    @property
    def generator(self) -> str:
        return "wrk" if self.plan.mode == "closed" and self.plan.use_wrk else "python"

    @property
    def wrk_tokens_path(self) -> Path:
        return self.work_dir / f"{self.tag}-w.tokens"

    def base_spec(self) -> GenSpec:
        plan = self.plan
        return GenSpec(port=self.sut.port, mode=plan.mode, duration_s=plan.duration_s, start_at=0.0,
                       tag=self.tag, skus=plan.skus, payment_tokens=plan.payment_tokens,
                       repeat_buyers=plan.repeat_buyers > 0)

    def gen_specs(self) -> list[GenSpec]:
        """The Python generator processes of this phase (none for a closed loop run by wrk)."""
        plan, base = self.plan, self.base_spec()

        def spec(i: int, **changes: Any) -> GenSpec:
            return msgspec.structs.replace(base, tag=f"{self.tag}-{i}", **changes)

        specs: list[GenSpec] = []
        if plan.mode == "open":
            assert plan.rate
            # At least the closed loop's connections whose max it follows, over the processes.
            open_connections = max(OPEN_CONNECTIONS, plan.connections // GEN_PROCESSES)
            specs = [spec(i, mode="open", rate=r, concurrency=open_connections, wait_every=plan.wait_every,
                          stream_every=plan.stream_every)
                     for i, r in enumerate(split_rate(plan.rate, GEN_PROCESSES))]
        elif plan.mode == "retry":
            specs = [spec(i, mode="retry", concurrency=plan.connections // GEN_PROCESSES, wait_s=1,
                          retry_timeout_s=plan.retry_timeout_s, resend_every=5) for i in range(GEN_PROCESSES)]
        elif self.generator == "python":
            specs = [spec(i, mode="closed", concurrency=plan.connections // GEN_PROCESSES)
                     for i in range(GEN_PROCESSES)]
        if plan.mode == "closed" and plan.sampler_rate > 0:
            # The sampler: a trickle of buyers who wait for their decision, beside the full load.
            specs.append(spec(len(specs), mode="open", rate=plan.sampler_rate, concurrency=200, wait_every=1))
        return specs

    def mint_tokens(self, specs: list[GenSpec]) -> list[GenSpec]:
        """Writes each generator's buyer tokens; the specs name their tokens file."""
        out = []
        for i, s in enumerate(specs):
            path = self.work_dir / f"{self.tag}-{i}.tokens"
            write_tokens(path, s.tag, tokens_needed(self.plan, s))
            out.append(msgspec.structs.replace(s, tokens_file=str(path)))
        return out

    def mint_wrk_tokens(self) -> Path | None:
        if self.generator != "wrk":
            return None
        closed = msgspec.structs.replace(self.base_spec(), tag=f"{self.tag}-w", mode="closed")
        write_tokens(self.wrk_tokens_path, f"{self.tag}-w", tokens_needed(self.plan, closed) * GEN_PROCESSES)
        return self.wrk_tokens_path

    async def load(self, specs: list[GenSpec], wrk_tokens: Path | None, flushes: Window,
                   profiling: Profiling | None) -> _Load:
        """Starts every generator at one common instant and waits for all of them to finish."""
        # Time for the generators to start and connect before the common start instant.
        start_at = time.time() + 1.5
        start_ms = int(start_at * 1000)
        flushes.mark_idle(time.time())
        gens = [await self.spawn_gen(i, msgspec.structs.replace(s, start_at=start_at))
                for i, s in enumerate(specs)]
        # CPU is measured over the load window only: from the common start instant.
        await asyncio.sleep(max(0.0, start_at - time.time()))
        flushes.start(time.time())
        cpu = CpuMark.take(self.sut.cpu_groups())
        wrk_proc = None
        if wrk_tokens is not None:
            plan = self.plan
            wrk_proc = await spawn_wrk(self.sut, wrk_tokens, plan.repeat_buyers > 0, plan.skus,
                                       plan.duration_s, plan.connections, start_at)
        spies = await self.start_profiles(profiling)
        wrk_out = await self.wait(gens, wrk_proc, spies)
        end_ms = int(time.time() * 1000)
        cpu_pct, box_busy, steal = cpu.usage(max(0.001, (end_ms - start_ms) / 1000))
        return _Load(gens=gens, wrk_out=wrk_out, profiled=bool(spies), start_ms=start_ms, end_ms=end_ms,
                     cpu_pct=cpu_pct, box_busy_pct=box_busy, steal_pct=steal)

    async def spawn_gen(self, i: int, spec: GenSpec) -> GenProcess:
        return await spawn_gen(spec, self.work_dir / f"{self.tag}-{i}.gen", i, self.live, self.sink)

    async def start_profiles(self, profiling: Profiling | None) -> list[asyncio.subprocess.Process]:
        if profiling is None:
            return []
        label = self.sut.label().replace("/", "-")
        return await _start_profiles(self.sut, self.plan, profiling,
                                     f"profile-{self.scenario}-{label}-{self.plan.phase}")

    async def wait(self, gens: list[GenProcess], wrk_proc: asyncio.subprocess.Process | None,
                   spies: list[asyncio.subprocess.Process]) -> bytes | None:
        """Waits for the load to end with the live line on; returns wrk's output (None: no wrk)."""
        progress = asyncio.create_task(show_progress(self.sut, self.live, time.monotonic()))
        wrk_out = None
        try:
            if wrk_proc is not None:
                wrk_out, _ = await wrk_proc.communicate()
            for g in gens:
                await g.proc.wait()
                await g.pump
            for spy in spies:
                await spy.wait()
        finally:
            progress.cancel()
            print(file=sys.stderr)
        return wrk_out

    def result(self, load: _Load) -> PhaseResult:
        plan = self.plan
        result = PhaseResult(scenario=self.scenario, system=self.sut.label(), phase=plan.phase,
                             mode=plan.mode, generator=self.generator, duration_s=plan.duration_s,
                             offered_rate=plan.rate, cpu_pct=load.cpu_pct, started_ms=load.start_ms,
                             ended_ms=load.end_ms, box_busy_pct=load.box_busy_pct,
                             steal_pct=load.steal_pct, buyers="repeat" if plan.repeat_buyers else "new")
        if load.profiled:
            result.notes.append("profiled with py-spy (its sampling costs some CPU): see profile-*")
        return result


async def finish_phase(sut: System, result: PhaseResult, drain_timeout_s: float) -> bool:
    """After the load: wait for the backlog, then take decisions and their latency from the DB."""
    drained = await sut.drain(drain_timeout_s)
    if not drained:
        result.notes.append(f"backlog not drained within {drain_timeout_s:.0f}s")
    return drained


async def db_figures(sut: System, result: PhaseResult) -> None:
    start_ms, end_ms = result.started_ms, result.ended_ms
    decided, lat, per_s = await sut.decisions_between(start_ms, end_ms)
    if decided or lat:
        result.decisions_per_s = round(decided / max(0.001, (end_ms - start_ms) / 1000), 1)
        result.decision_db = summarize(lat)
        result.decided_per_second = per_s
