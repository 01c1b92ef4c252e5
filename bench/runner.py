"""Runs the phases of a scenario against one system and measures them.

A phase is one stretch of load: `max` (closed loop, to find the maximum), `open@F` (open loop at
F x that maximum, latency from the intended send time) or `retry` (the retry storm). While a
phase runs, a live line on stderr shows the answer rate, p99, errors and the backlog.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec
import psutil

from bench.buyers import write_tokens
from bench.disk import FlushFigures, Probe, Window
from bench.loadgen import GenResult, GenSpec, Mode
from bench.paid import PaidFigures
from bench.stats import LatencySummary, split_rate, summarize
from bench.systems import Invariants, System, cpu_delta, cpu_snapshot

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "purchases.lua"
GEN_PROCESSES = 2  # one per core: more Python processes only fight over the same two cores
# Open-loop connections per generator process. Like the closed loop's 64, so an open phase at
# F x max meets the server with the connection count that max was measured with (aiohttp's
# throughput drops with thousands of connections); when all are busy, requests wait in the
# generator and their latency still counts from the intended send time.
OPEN_CONNECTIONS = 64


class PhaseResult(msgspec.Struct, kw_only=True):
    scenario: str
    system: str
    phase: str  # max | open@0.8 | retry ...
    mode: Mode
    generator: str  # wrk | python
    duration_s: float
    started_ms: int = 0
    ended_ms: int = 0
    offered_rate: float | None = None
    answered_per_s: float = 0.0  # definitive answers: 2xx + 409 sold out
    accepted_per_s: float = 0.0  # 2xx: a purchase exists
    answered: int = 0
    accepted: int = 0
    buyers: str = "new"  # new: a new buyer (token) per click; repeat: a pool of buyers reused
    clicks_repeated: int = 0  # requests past the minted tokens, sent as retries of earlier clicks
    flush: FlushFigures | None = None  # from the load's start to the end of its drain
    drained: bool = True
    decisions_per_s: float | None = None
    accept: LatencySummary = msgspec.field(default_factory=LatencySummary)
    decision: LatencySummary = msgspec.field(default_factory=LatencySummary)
    decision_db: LatencySummary = msgspec.field(default_factory=LatencySummary)
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    cpu_pct: dict[str, float] = {}  # % of one core over the load window
    gen_lag_p99_ms: float | None = None
    box_busy_pct: float | None = None  # all CPUs of the box, busy share over the load window
    steal_pct: float | None = None  # CPU taken by the hypervisor for other guests (noisy neighbours)
    answered_per_second: list[int] = []
    decided_per_second: list[int] = []
    retry: dict[str, int] | None = None
    notes: list[str] = []


class SystemRun(msgspec.Struct, kw_only=True):
    scenario: str
    system: str
    shards: int | None = None
    phases: list[PhaseResult] = []
    invariants: Invariants = msgspec.field(default_factory=Invariants)
    drained: bool = True
    paid: PaidFigures | None = None  # the paid scenario: payment outcomes and money checks


class GenLine(msgspec.Struct):
    """A generator's per-second progress line (bench.loadgen's `progress`)."""

    n: int = 0  # answers in the last second
    sent: int = 0
    err: int = 0
    p99: float | None = None  # ms, of the last second's answers


class WrkLatencyUs(msgspec.Struct):
    p50: float
    p95: float
    p99: float
    max: float
    mean: float


class WrkResult(msgspec.Struct):
    """The `WRK_JSON` line bench/wrk/purchases.lua prints when wrk is done."""

    requests: int
    duration_us: int
    errors: dict[str, int]  # connect, read, write, timeout, status (= non-2xx answers)
    latency_us: WrkLatencyUs
    statuses: dict[str, int]
    seconds: dict[int, int]  # unix second -> answers
    ids: list[str]
    repeated: int = 0  # requests past the tokens file's end (retries of earlier clicks)


_decode_gen_line = msgspec.json.Decoder(GenLine).decode
_decode_wrk = msgspec.json.Decoder(WrkResult).decode


@dataclass
class Live:
    """What the progress line shows; fed by the generators' per-second lines."""

    label: str
    gen_lines: dict[int, GenLine] = field(default_factory=dict)

    def update(self, idx: int, line: GenLine) -> None:
        self.gen_lines[idx] = line


async def _pump(idx: int, stream: asyncio.StreamReader, live: Live, sink: list[str]) -> None:
    while True:
        raw = await stream.readline()
        if not raw:
            return
        text = raw.decode(errors="replace").strip()
        if text.startswith("{"):
            try:
                live.update(idx, _decode_gen_line(text))
                continue
            except msgspec.DecodeError:
                pass
        sink.append(text)


async def _progress(sut: System, live: Live, started: float) -> None:
    last_count, last_t = None, time.monotonic()
    while True:
        await asyncio.sleep(1.0)
        try:
            count, backlog = await sut.live()
        except Exception:  # the live line is best effort; the phase's figures come from elsewhere
            count, backlog = None, None
        t = time.monotonic()
        rate = None if count is None or last_count is None else (count - last_count) / (t - last_t)
        last_count, last_t = count, t
        p99s = [line.p99 for line in live.gen_lines.values() if line.p99 is not None]
        errs = sum(line.err for line in live.gen_lines.values())
        print(
            f"\r\x1b[K{live.label} t={t - started:4.0f}s rate={_fmt(rate)}/s "
            f"p99={_fmt(max(p99s) if p99s else None, 1)}ms errors={errs}/s backlog={_fmt(backlog)}",
            end="", file=sys.stderr, flush=True,
        )


def _fmt(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


async def _spawn_gen(spec: GenSpec, out: Path, idx: int, live: Live,
                     sink: list[str]) -> tuple[asyncio.subprocess.Process, asyncio.Task[None]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", msgspec.json.encode(spec).decode(), str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    return proc, asyncio.create_task(_pump(idx, proc.stdout, live, sink))


async def _spawn_wrk(sut: System, tokens: Path, repeat: bool, skus: list[str], duration_s: float,
                     connections: int, start_at: float) -> asyncio.subprocess.Process:
    await asyncio.sleep(max(0.0, start_at - time.time()))
    return await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout", "10s",
        "-s", str(WRK_SCRIPT), sut.base_url, "--", str(tokens), "repeat" if repeat else "per-buyer",
        ",".join(skus), "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _children_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def _self_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


@dataclass
class PhasePlan:
    phase: str
    mode: Mode
    skus: list[str]
    duration_s: float
    rate: float | None = None  # open loop, total over all generator processes
    connections: int = 64  # closed loop / retry: total
    wait_every: int = 10  # open loop: every Nth request waits for its decision
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


async def _start_profiles(sut: System, plan: PhasePlan, out_dir: Path,
                          prefix: str) -> list[asyncio.subprocess.Process]:
    """py-spy flame graphs of every Python process of the system over the load window."""
    exe = py_spy()
    if exe is None:
        return []
    spies = []
    for p in sut.processes:
        if p.proc is None:
            continue
        spies.append(await asyncio.create_subprocess_exec(
            exe, "record", "--rate", "100", "--duration", str(max(1, int(plan.duration_s))),
            "--output", str(out_dir / f"{prefix}-{p.name}.svg"), "--pid", str(p.proc.pid),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        ))
    return spies


async def run_phase(sut: System, scenario: str, plan: PhasePlan, work_dir: Path, tag: str,
                    probe: Probe, drain_timeout_s: float,
                    profile_dir: Path | None = None) -> tuple[PhaseResult, set[str]]:
    """Load, then drain; CPU over the load window, disk flushes from the load's start to the
    end of the drain (the commits of what the load accepted belong to it)."""
    label = f"[{scenario} {sut.label()} {plan.phase}]"
    live = Live(label)
    sink: list[str] = []
    groups = sut.cpu_groups()
    generator = "wrk" if plan.mode == "closed" and plan.use_wrk else "python"
    gens: list[tuple[asyncio.subprocess.Process, asyncio.Task[None], Path]] = []
    wrk_proc = None

    base = GenSpec(port=sut.port, mode=plan.mode, duration_s=plan.duration_s, start_at=0.0,
                   tag=tag, skus=plan.skus, payment_tokens=plan.payment_tokens,
                   repeat_buyers=plan.repeat_buyers > 0)

    def spec(i: int, **changes: Any) -> GenSpec:
        return msgspec.structs.replace(base, tag=f"{tag}-{i}", **changes)

    specs: list[GenSpec] = []
    if plan.mode == "open":
        assert plan.rate
        specs = [spec(i, mode="open", rate=r, concurrency=OPEN_CONNECTIONS, wait_every=plan.wait_every)
                 for i, r in enumerate(split_rate(plan.rate, GEN_PROCESSES))]
    elif plan.mode == "retry":
        specs = [spec(i, mode="retry", concurrency=plan.connections // GEN_PROCESSES, wait_s=1,
                      retry_timeout_s=plan.retry_timeout_s, resend_every=5) for i in range(GEN_PROCESSES)]
    elif generator == "python":
        specs = [spec(i, mode="closed", concurrency=plan.connections // GEN_PROCESSES)
                 for i in range(GEN_PROCESSES)]
    if plan.mode == "closed" and plan.sampler_rate > 0:
        # The sampler: a trickle of buyers who wait for their decision, beside the full load.
        specs.append(spec(len(specs), mode="open", rate=plan.sampler_rate, concurrency=200, wait_every=1))
    # Buyer tokens are minted before the clock starts (a few seconds for a few 100k buyers).
    for i, s in enumerate(specs):
        path = work_dir / f"{tag}-{i}.tokens"
        write_tokens(path, s.tag, tokens_needed(plan, s))
        specs[i] = msgspec.structs.replace(s, tokens_file=str(path))
    wrk_tokens = work_dir / f"{tag}-w.tokens"
    if generator == "wrk":
        closed = msgspec.structs.replace(base, tag=f"{tag}-w", mode="closed")
        write_tokens(wrk_tokens, f"{tag}-w", tokens_needed(plan, closed) * GEN_PROCESSES)
    flushes = Window(probe, sut.syncing_pids())
    await flushes.attach(work_dir)
    # Time for the generators to start and connect before the common start instant.
    start_at = time.time() + 1.5
    start_ms = int(start_at * 1000)
    specs = [msgspec.structs.replace(s, start_at=start_at) for s in specs]
    flushes.mark_idle(time.time())
    for i, s in enumerate(specs):
        out = work_dir / f"{tag}-{i}.gen"
        proc, pump = await _spawn_gen(s, out, i, live, sink)
        gens.append((proc, pump, out))
    # CPU is measured over the load window only: from the common start instant.
    await asyncio.sleep(max(0.0, start_at - time.time()))
    flushes.start(time.time())
    cpu_before = {name: cpu_snapshot(pids) for name, pids in groups.items()}
    children_before, self_before = _children_cpu(), _self_cpu()
    box_before = psutil.cpu_times()
    if generator == "wrk":
        wrk_proc = await _spawn_wrk(sut, wrk_tokens, plan.repeat_buyers > 0, plan.skus, plan.duration_s,
                                    plan.connections, start_at)
        groups["wrk"] = [wrk_proc.pid]

    spies: list[asyncio.subprocess.Process] = []
    if profile_dir is not None:
        label = sut.label().replace("/", "-")
        spies = await _start_profiles(sut, plan, profile_dir, f"profile-{scenario}-{label}-{plan.phase}")
    progress = asyncio.create_task(_progress(sut, live, time.monotonic()))
    wrk_out = b""
    try:
        if wrk_proc is not None:
            wrk_out, _ = await wrk_proc.communicate()
        for proc, pump, _ in gens:
            await proc.wait()
            await pump
        for spy in spies:
            await spy.wait()
    finally:
        progress.cancel()
        print(file=sys.stderr)
    end_ms = int(time.time() * 1000)
    wall = max(0.001, (end_ms - start_ms) / 1000)
    cpu_after = {name: cpu_snapshot(pids) for name, pids in groups.items() if name != "wrk"}
    cpu = {n: round(100 * cpu_delta(cpu_before[n], cpu_after[n]) / wall, 1) for n in cpu_after}
    cpu["generator"] = round(100 * (_children_cpu() - children_before) / wall, 1)
    cpu["bench harness"] = round(100 * (_self_cpu() - self_before) / wall, 1)
    box_busy, steal = _box_usage(box_before, psutil.cpu_times())

    result = PhaseResult(scenario=scenario, system=sut.label(), phase=plan.phase, mode=plan.mode,
                         generator=generator, duration_s=plan.duration_s, offered_rate=plan.rate,
                         cpu_pct=cpu, started_ms=start_ms, ended_ms=end_ms, box_busy_pct=box_busy,
                         steal_pct=steal, buyers="repeat" if plan.repeat_buyers else "new")
    if spies:
        result.notes.append("profiled with py-spy (its sampling costs some CPU): see profile-*.svg")
    ids: set[str] = set()
    accept_ms: list[float] = []
    decision_ms: list[float] = []
    lag_ms: list[float] = []
    per_second: list[int] = []
    ok = answered = 0
    retry = {"logical": 0, "retries": 0, "gave_up": 0, "id_mismatch": 0}
    for proc, _, out in gens:
        if proc.returncode != 0 or not out.exists():
            result.notes.append(f"generator failed: {' | '.join(sink[-5:])}")
            continue
        g = msgspec.msgpack.decode(out.read_bytes(), type=GenResult)
        _merge(result.statuses, g.statuses)
        _merge(result.errors, g.errors)
        ids.update(g.accepted_ids)
        accept_ms += g.accept_ms
        decision_ms += g.decision_ms
        lag_ms += g.lag_ms
        ok += sum(n for code, n in g.statuses.items() if code.startswith("2"))
        answered += g.answered
        per_second = _add_lists(per_second, g.per_second)
        result.clicks_repeated += g.clicks_repeated
        for k in retry:
            retry[k] += getattr(g, k)
        if g.undecided:
            result.errors["undecided_after_wait"] = result.errors.get("undecided_after_wait", 0) + g.undecided
    result.accept = summarize(accept_ms)
    result.decision = summarize(decision_ms)
    if lag_ms:
        result.gen_lag_p99_ms = summarize(lag_ms).p99
    if plan.mode == "retry":
        result.retry = retry
    if wrk_proc is not None:
        w = _parse_wrk(wrk_out)
        if w is None:
            result.notes.append("wrk gave no result: " + wrk_out.decode(errors="replace")[-300:])
        else:
            _merge(result.statuses, w.statuses)
            for k, v in w.errors.items():
                if v and k != "status":  # "status" = non-2xx answers, already in statuses
                    result.errors[k] = result.errors.get(k, 0) + v
            ids.update(i for i in w.ids if i != "p_echo")
            result.clicks_repeated += w.repeated
            ok += sum(n for code, n in w.statuses.items() if code.startswith("2"))
            answered += sum(n for code, n in w.statuses.items() if code.startswith("2") or code == "409")
            lat = w.latency_us
            # wrk's latencies are closed-loop (coordinated omission applies): POST -> answer.
            result.accept = LatencySummary(count=w.requests, p50=lat.p50 / 1000, p95=lat.p95 / 1000,
                                           p99=lat.p99 / 1000, max=lat.max / 1000, mean=lat.mean / 1000)
            secs = sorted(w.seconds.items())
            if secs:
                first = secs[0][0]
                wrk_ps = [0] * (secs[-1][0] - first + 1)
                for second, v in secs:
                    wrk_ps[second - first] += v
                per_second = _add_lists(per_second, wrk_ps)
    result.accepted_per_s = round(ok / plan.duration_s, 1)
    result.answered_per_s = round(answered / plan.duration_s, 1)
    result.accepted, result.answered = ok, answered
    result.answered_per_second = per_second
    if result.clicks_repeated and sut.name != "echo":
        result.notes.append(f"{result.clicks_repeated:,} requests past the minted buyers were sent as "
                            "retries of earlier clicks (same buyer, same key)")
    result.drained = await finish_phase(sut, result, drain_timeout_s)
    result.flush = await flushes.stop(time.time())
    for path in [wrk_tokens, *(Path(s.tokens_file) for s in specs)]:
        path.unlink(missing_ok=True)
    return result, ids


class CpuTimes(Protocol):
    """psutil.cpu_times(): a named tuple of seconds whose fields depend on the platform."""

    @property
    def idle(self) -> float: ...

    def __iter__(self) -> Iterator[float]: ...


def _box_usage(before: CpuTimes, after: CpuTimes) -> tuple[float | None, float | None]:
    """(busy %, steal %) of the whole box between two psutil.cpu_times() snapshots."""
    total = sum(after) - sum(before)
    if total <= 0:
        return None, None
    iowait_s = getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0)
    idle = (after.idle - before.idle) + iowait_s
    steal = getattr(after, "steal", 0.0) - getattr(before, "steal", 0.0)
    return round(100 * (total - idle - steal) / total, 1), round(100 * steal / total, 1)


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


def _parse_wrk(out: bytes) -> WrkResult | None:
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("WRK_JSON "):
            return _decode_wrk(line[len("WRK_JSON "):])
    return None


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
