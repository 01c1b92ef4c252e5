"""The report's sections of one scenario each: sell-out targets, event streams, the retry storm,
payments and the drop. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence

from bench.headline import TARGET_P99_MS, TARGET_VS_ECHO, TARGET_VS_NAIVE
from bench.markdown import fmt, lat, render_table, section, verdict
from bench.results import Headline, SystemRun


def render_sellout_targets(h: Headline) -> list[str]:
    out = []
    p99_hot = h.p99_decision_at_80pct_ms
    rows: list[Sequence[object]] = [
        ["hot-sku answered/s flashsale / naive", fmt(h.vs_naive, 2), f">= {TARGET_VS_NAIVE:g}",
         verdict(None if h.vs_naive is None else h.vs_naive >= TARGET_VS_NAIVE)],
        ["hot-sku answered/s flashsale / echo", fmt(h.vs_echo, 2), f">= {TARGET_VS_ECHO:g}",
         verdict(None if h.vs_echo is None else h.vs_echo >= TARGET_VS_ECHO)],
        ["many-skus accepted/s flashsale (best shards) / naive", fmt(h.many_vs_naive, 2),
         f">= {TARGET_VS_NAIVE:g}",
         verdict(None if h.many_vs_naive is None else h.many_vs_naive >= TARGET_VS_NAIVE)],
        ["hot-sku p99 decision at 0.8 x max (ms)", fmt(p99_hot), f"<= {TARGET_P99_MS:g}",
         verdict(None if p99_hot is None else p99_hot <= TARGET_P99_MS)],
        *[[f"many-skus p99 decision at 0.8 x max, {k} (ms)", fmt(v), f"<= {TARGET_P99_MS:g}",
           verdict(None if v is None else v <= TARGET_P99_MS)]
          for k, v in h.many_p99_decision_at_80pct_ms.items() if k.startswith("flashsale")],
    ]
    out.append(render_table(["figure", "value", "target", "verdict"], rows))
    out += ["", "hot-sku max answered/s: " + (", ".join(
        f"{k} {fmt(v)}" for k, v in h.hot_answered_per_s.items()) or "-") + ". many-skus max accepted/s: "
        + (", ".join(f"{k} {fmt(v)}" for k, v in h.many_accepted_per_s.items()) or "-") + ".", "",
        "answered = definitive answers (2xx, or 409 sold out from flashsale's or redis's sold-out "
        "answer); accepted = 2xx (a purchase exists).", ""]
    return out


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


def render_retry(runs: Sequence[SystemRun]) -> list[str]:
    """The retry storm: logical purchases, retries, give-ups and id mismatches per system."""
    rows = [[run.phases[0].system, *(p.retry or {}).values()]
            for run in runs for p in run.phases if p.retry]
    if not rows:
        return []
    return ["", "## Retry storm", "",
            render_table(["system", "logical purchases", "retries", "gave up", "id mismatch"], rows)]


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
            *(lat(p.decision)[:3] if p else [None] * 3), f.reserve_db.p99,
            f.confirmed_per_s_in_load, f.confirmed_per_s, *lat(f.confirm_db)[:3], f.settle_s,
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
