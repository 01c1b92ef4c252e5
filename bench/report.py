"""results.json -> report.md tables, and the headline comparison. Pure functions (no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from bench.disk import ceiling_per_s, per_accepted
from bench.runner import PhaseResult, SystemRun
from bench.stats import LatencySummary, ratio

TARGET_VS_NAIVE = 10.0
TARGET_VS_ECHO = 0.5
TARGET_P99_MS = 100.0
TARGET_FLUSHES_PER_ACCEPTED = 0.05
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


class Headline(msgspec.Struct):
    """The SPEC's targets, from one run. The accepted path (`acc_*`: scenario `accepted`, every
    request an order) and sell-out (hot-sku) are separate figures, never mixed.

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
    # The accepted path (scenario `accepted`): every request becomes an order.
    acc_accepted_per_s: dict[str, float] = {}
    acc_vs_naive: float | None = None
    acc_vs_echo: float | None = None
    acc_p99_decision_at_80pct_ms: float | None = None
    acc_flushes_per_accepted: float | None = None  # flashsale, max phase


class RunResult(msgspec.Struct, kw_only=True):
    started: str
    command: str
    machine: dict[str, str]
    settings: dict[str, str]
    runs: list[SystemRun] = []
    headline: Headline = msgspec.field(default_factory=Headline)
    notes: list[str] = []
    verify_us: dict[str, float] = {}  # in-process BuyerVerifier: new token / already verified


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
            if run.scenario == "accepted" and p.phase == "max":
                h.acc_accepted_per_s[p.system] = p.accepted_per_s
                if p.system.startswith("flashsale"):
                    h.acc_flushes_per_accepted = flushes_per_accepted(p)
            if run.scenario == "accepted" and p.phase == "open@0.8" and p.system.startswith("flashsale"):
                h.acc_p99_decision_at_80pct_ms = p.decision.p99
    fs_hot = max((v for k, v in h.hot_answered_per_s.items() if k.startswith("flashsale")), default=None)
    fs_many = max((v for k, v in h.many_accepted_per_s.items() if k.startswith("flashsale")), default=None)
    h.vs_naive = ratio(fs_hot, h.hot_answered_per_s.get("naive"))
    h.vs_echo = ratio(fs_hot, h.hot_answered_per_s.get("echo"))
    h.many_vs_naive = ratio(fs_many, h.many_accepted_per_s.get("naive"))
    fs_acc = max((v for k, v in h.acc_accepted_per_s.items() if k.startswith("flashsale")), default=None)
    h.acc_vs_naive = ratio(fs_acc, h.acc_accepted_per_s.get("naive"))
    h.acc_vs_echo = ratio(fs_acc, h.acc_accepted_per_s.get("echo"))
    return h


def flushes_per_accepted(p: PhaseResult) -> float | None:
    return per_accepted(p.flush.flushes if p.flush else None, p.accepted)


def front_names(p: PhaseResult) -> list[str]:
    """The process(es) that answer HTTP: ingest (and ingest-2...) for flashsale, else the
    baseline's own process."""
    if p.system.startswith("flashsale"):
        return [n for n in p.cpu_pct if n.startswith("ingest")]
    return [p.system] if p.system in p.cpu_pct else []


def cpu_us_per_request(p: PhaseResult, names: Sequence[str] | None = None) -> float | None:
    """CPU microseconds per definitive answer of the named processes (default: the front)."""
    names = front_names(p) if names is None else names
    if not names or p.answered_per_s <= 0:
        return None
    pct = sum(p.cpu_pct.get(n, 0.0) for n in names)
    return pct / 100 / p.answered_per_s * 1e6


def system_family(label: str) -> str:
    return label.split("/", 1)[0]


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
    out += ["", f"Invariant violations, all scenarios and systems: {h.invariant_violations} "
            f"({_verdict(h.invariant_violations == 0)}; must be 0, table below)."]
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


def section(title: str, intro: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A `##` section of one table, or nothing when there are no rows."""
    if not rows:
        return []
    return ["", f"## {title}", "", intro, "", render_table(headers, rows)]


def render_streams(runs: Sequence[SystemRun]) -> list[str]:
    """Time to the decision as a buyer's app sees it without polling: every 10th request of
    flashsale's open-loop phases is followed on its event stream, beside the long-polled ones."""
    rows = []
    for run in runs:
        for p in run.phases:
            if p.stream_decision.count:
                s, d = p.stream_decision, p.decision
                rows.append([p.scenario, p.system, p.phase, s.count, s.p50, s.p95, s.p99, s.max, d.p99])
    return section(
        "Time to decision through the event stream",
        "POST -> the decided state on `GET /v1/purchases/{id}/events`, from the intended send "
        "time (ms); beside it the p99 of the long-polled requests (`Prefer: wait`) of the same "
        "phase.",
        ["scenario", "system", "phase", "samples", "stream p50", "stream p95", "stream p99",
         "stream max", "long-poll p99"], rows)


def render_sellout_targets(h: Headline) -> list[str]:
    out = []
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
    ]
    out.append(render_table(["figure", "value", "target", "verdict"], rows))
    out += ["", "hot-sku max answered/s: " + (", ".join(
        f"{k} {fmt(v)}" for k, v in h.hot_answered_per_s.items()) or "-") + ". many-skus max accepted/s: "
        + (", ".join(f"{k} {fmt(v)}" for k, v in h.many_accepted_per_s.items()) or "-") + ".", "",
        "answered = definitive answers (2xx, or 409 sold out from flashsale's or redis's sold-out "
        "answer); accepted = 2xx (a purchase exists).", ""]
    return out


def render_body(result: RunResult) -> list[str]:
    out = ["## Throughput and latency", "",
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
    out += render_flushes(result.runs)
    out += render_group_commit(result.runs)
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
    out += render_drop(result.runs)
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
    return out


def render_drop(runs: Sequence[SystemRun]) -> list[str]:
    """The drop scenario's section: each group's share of the stock, with and without a draw."""
    out: list[str] = []
    for run in runs:
        f = run.drop
        if f is None:
            continue
        out += ["", "## Drop: who gets the stock at the opening second (drop scenario)", "",
                f"{f.buyers:,} buyers click within {f.window_s} s of the start for {f.stock:,} units "
                f"(one per buyer). Bots send {f.bot_keys} keys each over "
                f"{fmt(f.connections['bots'])} connections ("
                f"{fmt(f.connections['people'])} for all people: ten times as many per buyer) and "
                f"start {f.head_start_ms} ms earlier. First come first served, then the same crowd "
                f"on a SKU with a {f.window_s} s draw window. Noise of a share with the draw: "
                f"±{f.noise_2sigma * 100:.1f} points (2 sigma).", "",
                render_table(["group", "buyers", "share of buyers", "units FCFS", "share FCFS",
                              "units with draw", "share with draw"],
                             [[g.group, g.buyers, f"{g.buyer_share * 100:.1f} %", g.fcfs_units,
                               f"{g.fcfs_share * 100:.1f} %", g.draw_units,
                               f"{g.draw_share * 100:.1f} %"] for g in f.groups]),
                "", "Answers: " + "; ".join(
                    f"{v}: " + ", ".join(f"{k} {n:,}" for k, n in sorted(a.items()))
                    for v, a in f.answers.items())
                + ". Generator lateness p99: " + ", ".join(
                    f"{v} {ms:.0f} ms" for v, ms in f.late_ms_p99.items()) + "."]
    return out


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


def _target(value: float | None, ok: bool | None, target: str, digits: int = 2) -> list[object]:
    return [fmt(value, digits), target, _verdict(ok)]


def render_accepted(result: RunResult) -> list[str]:
    """The accepted-path headline: targets, a README-ready table, the 1 ms projection and what
    verifying buyers' tokens costs."""
    h = result.headline
    acc = [(run, p) for run in result.runs if run.scenario == "accepted" for p in run.phases]
    if not acc:
        return []
    out = ["", "## Accepted path (one hot SKU, stock >= demand, a new buyer per request)", ""]
    fpp, p99 = h.acc_flushes_per_accepted, h.acc_p99_decision_at_80pct_ms
    rows: list[Sequence[object]] = [
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
    out.append(render_table(["figure", "value", "target", "verdict"], rows))
    out += ["", "accepted = 2xx answers; every one is an order (stock never runs out). Closed loop "
            f"`max` = wrk -c{_connections(result)}; `open@0.8` = open loop at 0.8 x that max, decided "
            "latency through `Prefer: wait` (every 10th request) from the intended send time. "
            "flushes = the disk's flush requests from the load's start to the end of the drain, per "
            "accepted purchase; ceiling = purchases/s one serial flusher allows if each flush took "
            f"{PROJECTION_FLUSH_MS:g} ms. CPU = server processes' CPU per accepted purchase (us). "
            f"Flushes from: {result.settings.get('disk flushes', '?')}.", ""]
    echo = h.acc_accepted_per_s.get("echo")
    naive = h.acc_accepted_per_s.get("naive")
    rows = []
    for run, p in acc:
        if p.phase != "max":
            continue
        opens = [q for q in run.phases if q.phase == "open@0.8"]
        o = opens[0] if opens else None
        fp = flushes_per_accepted(p)
        servers = [n for n in p.cpu_pct if n not in ("generator", "bench harness", "wrk")]
        rows.append([p.system, p.accepted_per_s, fmt(ratio(p.accepted_per_s, naive), 2),
                     fmt(ratio(p.accepted_per_s, echo), 2), o.decision.p99 if o else None,
                     fmt(fp, 3), "-" if p.system == "echo" else _ceiling(fp),
                     fmt(cpu_us_per_request(p, servers), 0),
                     fmt(cpu_us_per_request(p), 0), LOSES.get(system_family(p.system), "?")])
    out.append(render_table(["system", "accepted/s (max)", "x naive", "x echo",
                             "p99 decided at 0.8 x max (ms)",
                             "flushes / accepted", f"ceiling @ {PROJECTION_FLUSH_MS:g} ms flush (/s)",
                             "server CPU us / accepted", "front CPU us / accepted",
                             "loses on power failure"], rows))
    lines = projection(result.runs)
    if lines:
        out += ["", f"Projection (a disk with {PROJECTION_FLUSH_MS:g} ms flushes, flushes in series, "
                "nothing else limiting; the measured flushes per purchase carried over):", ""]
        out += [f"- {line}" for line in lines]
    out += render_auth_cost(result)
    return out


def _connections(result: RunResult) -> str:
    return result.settings.get("closed-loop connections", "64")


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


def render_group_commit(runs: Sequence[SystemRun]) -> list[str]:
    """Where a 202 waits: flashsale's intent batches beside the time to the answer."""
    rows = [[run.scenario, p.system, p.phase, p.accepted_per_s, g.batches_per_s, g.intents_per_batch,
             g.store_ms_per_batch, p.accept.p50]
            for run in runs for p in run.phases if (g := p.group_commit) is not None]
    return section(
        "Group commit (flashsale's intent batches)",
        "From ingest's own counters over the load window: batches of intents sent to JetStream "
        "per second, intents per batch, and the mean time from a batch's first publish to "
        "JetStream's answer (the stored batch, fsynced), beside the POST -> 202 median (ms).",
        ["scenario", "system", "phase", "accepted/s", "batches/s", "intents / batch",
         "store ms / batch", "acc p50"], rows)


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
