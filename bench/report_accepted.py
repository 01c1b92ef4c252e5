"""The accepted-path sections of the report (scenario `accepted`: every request an order):
targets, one row per system, each connection count, CPU per process and flushes per purchase,
the 1 ms flush projection and what verifying buyers costs. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence

from bench.disk import ceiling_per_s
from bench.headline import (
    TARGET_CPU_VS_REDIS,
    TARGET_FLUSHES_PER_ACCEPTED,
    TARGET_P99_MS,
    TARGET_VS_ECHO,
    TARGET_VS_NAIVE,
    TARGET_VS_REDIS,
    cpu_us_per_request,
    flushes_per_accepted,
    server_names,
    system_family,
)
from bench.markdown import fmt, render_table, section, verdict
from bench.plans import is_max
from bench.results import PhaseResult, RunResult, SystemRun
from bench.stats import ratio

PROJECTION_FLUSH_MS = 1.0  # a cloud volume's flush; this VM's are ~0.1-0.2 ms

# What each system loses on power failure once it answered (for the accepted-path table).
LOSES = {
    "echo": "- (keeps nothing)",
    "naive": "nothing (200 after COMMIT, fsync=on)",
    "rowlock": "nothing (200 after COMMIT, fsync=on)",
    "redis-always": "nothing (AOF fsync before the reply)",
    "redis-everysec": "up to ~1 s of answered orders",
    "flashsale": "nothing (202 after the JetStream ack; needs sync_interval: always)",
}
# A flashsale on a local NATS cluster (label .../r3): R3 streams, nodes on nats-server's default
# sync interval.
CLUSTER_LOSES = "nothing while 2 of 3 nodes survive (here all 3 on one box, not fsynced per write)"


def projection(runs: Sequence[SystemRun], flush_ms: float = PROJECTION_FLUSH_MS) -> list[str]:
    """One line per system: the accepted-path ceiling on a disk whose flushes take `flush_ms`."""
    lines = []
    for run in runs:
        for p in run.phases:
            if run.scenario != "accepted" or p.phase != "max" or p.system == "echo":
                continue  # echo keeps nothing: its flushes are other processes'
            fpp = flushes_per_accepted(p)
            ceiling = ceiling_per_s(fpp, flush_ms)
            if fpp is None or ceiling is None:
                continue
            lines.append(f"{p.system}: {fmt(fpp, 3)} flushes per accepted purchase -> at most "
                         f"{fmt(round(ceiling))} purchases/s on a disk with {flush_ms:g} ms flushes")
    return lines


def _target(value: float | None, ok: bool | None, target: str, digits: int = 2) -> list[object]:
    return [fmt(value, digits), target, verdict(ok)]


def loses(system: str) -> str:
    """What the system loses on power failure once it answered (the table's last column)."""
    if system_family(system) == "flashsale" and "/r" in system:
        return CLUSTER_LOSES
    return LOSES.get(system_family(system), "?")


def render_accepted(result: RunResult) -> list[str]:
    """The accepted-path headline: targets, a README-ready table, each connection count, CPU
    and flushes per purchase, the 1 ms projection and what verifying buyers' tokens costs."""
    acc = [(run, p) for run in result.runs if run.scenario == "accepted" for p in run.phases]
    if not acc:
        return []
    out = ["", "## Accepted path (one hot SKU, stock >= demand, a new buyer per request)", ""]
    out += render_accepted_targets(result)
    out += ["", "accepted = 2xx answers; every one is an order (stock never runs out). Closed loop "
            f"`max` = wrk -c{_connections(result)[0]}; `open@0.8` = open loop at 0.8 x the highest "
            "max, decided latency through `Prefer: wait` (every 10th request) from the intended "
            "send time. flushes = the disk's flush requests from the load's start to the end of the "
            "drain, per accepted purchase; ceiling = purchases/s one serial flusher allows if each "
            f"flush took {PROJECTION_FLUSH_MS:g} ms. CPU = server processes' CPU per accepted purchase "
            f"(us). Flushes from: {result.settings.get('disk flushes', '?')}.", ""]
    out.append(render_accepted_systems(result))
    out += render_connections(result.runs)
    out += render_cost_per_purchase(result.runs)
    lines = projection(result.runs)
    if lines:
        out += ["", f"Projection (a disk with {PROJECTION_FLUSH_MS:g} ms flushes, flushes in series, "
                "nothing else limiting; the measured flushes per purchase carried over):", ""]
        out += [f"- {line}" for line in lines]
    out += render_auth_cost(result)
    return out


def render_accepted_targets(result: RunResult) -> list[str]:
    h = result.headline
    fpp, p99 = h.acc_flushes_per_accepted, h.acc_p99_decision_at_80pct_ms
    vs_redis, cpu_redis = h.acc_vs_redis_always, h.acc_cpu_vs_redis_always
    rows: list[Sequence[object]] = [
        ["accepted/s flashsale / redis-always",
         *_target(vs_redis, None if vs_redis is None else vs_redis >= TARGET_VS_REDIS,
                  f">= {TARGET_VS_REDIS:g}")],
        ["server CPU per accepted purchase flashsale / redis-always",
         *_target(cpu_redis, None if cpu_redis is None else cpu_redis <= TARGET_CPU_VS_REDIS,
                  f"<= {TARGET_CPU_VS_REDIS:g}")],
        ["accepted/s flashsale / naive",
         *_target(h.acc_vs_naive, None if h.acc_vs_naive is None else h.acc_vs_naive >= TARGET_VS_NAIVE,
                  f">= {TARGET_VS_NAIVE:g}")],
        ["accepted/s flashsale / echo",
         *_target(h.acc_vs_echo, None if h.acc_vs_echo is None else h.acc_vs_echo >= TARGET_VS_ECHO,
                  f">= {TARGET_VS_ECHO:g}")],
        ["disk flushes per accepted purchase at max, flashsale",
         *_target(fpp, None if fpp is None else fpp <= TARGET_FLUSHES_PER_ACCEPTED,
                  f"<= {TARGET_FLUSHES_PER_ACCEPTED:g}", 3)],
        ["p99 POST -> decided at 0.8 x max, flashsale (ms)",
         *_target(p99, None if p99 is None else p99 <= TARGET_P99_MS, f"<= {TARGET_P99_MS:g}", 1)],
    ]
    return [render_table(["figure", "value", "target", "verdict"], rows), "",
            f"flashsale: {h.acc_system or '-'} (its fastest topology in this run), at `max`."]


def render_accepted_systems(result: RunResult) -> str:
    """One row per system: its `max`, ratios, p99 at 0.8 x max, flushes, CPU, what it loses."""
    echo = result.headline.acc_accepted_per_s.get("echo")
    naive = result.headline.acc_accepted_per_s.get("naive")
    redis = result.headline.acc_accepted_per_s.get("redis-always")
    rows = []
    for run in result.runs:
        for p in run.phases:
            if run.scenario != "accepted" or p.phase != "max":
                continue
            o = next((q for q in run.phases if q.phase == "open@0.8"), None)
            fp = flushes_per_accepted(p)
            rows.append([p.system, p.accepted_per_s, fmt(ratio(p.accepted_per_s, redis), 2),
                         fmt(ratio(p.accepted_per_s, naive), 2),
                         fmt(ratio(p.accepted_per_s, echo), 2), o.decision.p99 if o else None,
                         fmt(fp, 3), "-" if p.system == "echo" else _ceiling(fp),
                         fmt(cpu_us_per_request(p, server_names(p)), 0),
                         fmt(cpu_us_per_request(p), 0), loses(p.system)])
    return render_table(["system", "accepted/s (max)", "x redis-always", "x naive", "x echo",
                         "p99 decided at 0.8 x max (ms)",
                         "flushes / accepted", f"ceiling @ {PROJECTION_FLUSH_MS:g} ms flush (/s)",
                         "server CPU us / accepted", "front CPU us / accepted",
                         "loses on power failure"], rows)


def render_connections(runs: Sequence[SystemRun]) -> list[str]:
    """accepted/s, flushes and CPU per purchase of every closed-loop maximum (`max` at the
    first connection count, `max-c<N>` at each further one), one row per system."""
    phases = [[p for p in run.phases if is_max(p.phase)] for run in runs if run.scenario == "accepted"]
    names = sorted({p.phase for ps in phases for p in ps}, key=_connections_of)
    if len(names) < 2:
        return []
    rows = []
    for ps in phases:
        by = {p.phase: p for p in ps}
        cells: list[object] = []
        for n in names:
            p = by.get(n)
            cells += [None, None, None] if p is None else [
                p.accepted_per_s, fmt(flushes_per_accepted(p), 3),
                fmt(cpu_us_per_request(p, server_names(p)), 0)]
        rows.append([ps[0].system if ps else "?", *cells])
    headers = ["system"] + [f"{h} ({n})" for n in names
                            for h in ("accepted/s", "flushes / accepted", "server CPU us / accepted")]
    return section("Accepted path by connection count",
                   "Closed loop (wrk) at each connection count: more connections make larger batches.",
                   headers, rows)


def _connections_of(phase: str) -> int:
    return 0 if phase == "max" else int(phase.removeprefix("max-c"))


def render_cost_per_purchase(runs: Sequence[SystemRun]) -> list[str]:
    """CPU of each process, and disk flushes, per accepted purchase, in every accepted-path
    phase: where a purchase's cost goes, process by process."""
    phases = [p for run in runs if run.scenario == "accepted" for p in run.phases
              if p.accepted_per_s > 0]
    names: list[str] = []
    for p in phases:
        names += [n for n in server_names(p) if n not in names]
    rows = [[p.system, p.phase, p.accepted_per_s, fmt(flushes_per_accepted(p), 3),
             fmt(cpu_us_per_request(p, server_names(p)), 0),
             *(fmt(_us_per_accepted(p, n), 0) if n in p.cpu_pct else "-" for n in names)]
            for p in phases]
    return section(
        "CPU per process and disk flushes, per accepted purchase",
        "us of CPU per accepted purchase (2xx) over the load window, by process (nats-server: "
        "every node of a cluster together; postgres: the postmaster and all its backends); "
        "flushes from the load's start to the end of the drain.",
        ["system", "phase", "accepted/s", "flushes / accepted", "server CPU us", *names], rows)


def _us_per_accepted(p: PhaseResult, name: str) -> float | None:
    if p.accepted_per_s <= 0:
        return None
    return p.cpu_pct.get(name, 0.0) / 100 / p.accepted_per_s * 1e6


def _connections(result: RunResult) -> list[str]:
    return result.settings.get("closed-loop connections", "64").split(",")


def _ceiling(fpp: float | None) -> str:
    c = ceiling_per_s(fpp, PROJECTION_FLUSH_MS)
    return fmt(None if c is None else round(c))


def render_auth_cost(result: RunResult) -> list[str]:
    """Verification cost: `max` (a new buyer and token per request: each token's signature is
    checked) against `max-repeat` (1,000 buyers reused: verified once, then cached), same run."""
    rows = []
    for run in result.runs:
        if run.scenario != "accepted":
            continue
        by_phase = {p.phase: p for p in run.phases}
        new, rep = by_phase.get("max"), by_phase.get("max-repeat")
        if new is None or rep is None:
            continue
        a, b = cpu_us_per_request(new), cpu_us_per_request(rep)
        rows.append([new.system, new.accepted_per_s, rep.accepted_per_s, fmt(a, 0), fmt(b, 0),
                     fmt(None if a is None or b is None else a - b, 0)])
    if not rows:
        return []
    v = result.verify_us
    out = ["", "### What verifying buyers costs (same run)", "",
           "`max`: a new buyer per request, so every request's token is verified (HS256 signature, "
           "claims); `max-repeat`: 1,000 buyers reused round-robin, each token verified once and then "
           "answered from the verifier's cache. front = the process answering HTTP (ingest; the "
           "baseline's own process), CPU us per request."
           + (f" In-process micro-benchmark of the same verifier: a new token {v.get('new', 0):.1f} us, "
              f"an already verified one {v.get('cached', 0):.2f} us." if v else ""), ""]
    out.append(render_table(["system", "accepted/s new buyers", "accepted/s repeated buyers",
                             "front CPU us/req new", "front CPU us/req repeated", "difference (us)"], rows))
    return out
