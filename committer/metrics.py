"""Prometheus metrics of a committer (the SLIs it owns)."""

import itertools
import time
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from committer.step import Step
from flashsale.metrics import observe_many
from proto.messages import Decision, Intent, Purchase

# Of a refusal's reason, as a label: an upsert's refusal explains itself in a sentence, and
# a label value must stay short and of a bounded set.
REFUSAL_REASON_LABEL_MAX_CHARS = 40

DECISIONS = Counter(
    "flashsale_decisions_total", "Purchase decisions committed", ["shard", "status", "reason"]
)
DECISION_LATENCY = Histogram(
    "flashsale_decision_latency_seconds",
    "Accepted at ingest -> committed decision (first decision of a purchase; not of the "
    "purchases a draw decides, which wait for it on purpose)",
    ["shard"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "flashsale_batch_size", "Intents per committed batch", ["shard"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
COMMIT_SECONDS = Histogram(
    "flashsale_commit_seconds", "Postgres transaction time per batch", ["shard"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1),
)
BACKLOG = Gauge("flashsale_backlog_intents", "Intents waiting or unacked for this shard", ["shard"])
REFUSALS = Counter("flashsale_refusals_total", "Intents refused", ["shard", "kind", "reason"])
CONFLICTS_UNRESOLVED = Counter(
    "flashsale_conflicts_unresolved_total",
    "Batches whose insert met again purchase ids the writer had read back from Postgres (it "
    "stops: deciding the batch again would meet them forever)",
    ["shard"],
)
DUPLICATES = Counter(
    "flashsale_duplicate_intents_total", "Redelivered or retried intents answered from memory",
    ["shard"],
)
STOCK_REMAINING = Gauge("flashsale_stock_remaining", "Stock neither reserved nor sold", ["sku"])
EPOCH = Gauge("flashsale_shard_epoch", "Lease epoch held by this committer", ["shard"])
WRITER = Gauge(
    "flashsale_committer_writer", "1 while this process holds its shard's lease, 0 as a standby",
    ["shard"],
)


_decision_children: dict[tuple[str, str, str], Counter] = {}
_latency_children: dict[str, Histogram] = {}


def count_decisions(shard: str, decisions: Iterable[Decision]) -> None:
    """One increment per (status, reason) a batch holds, not one per decision: labels() parses
    and hashes its arguments on every call, so the children are cached (statuses and reasons
    are small fixed sets)."""
    counts: dict[tuple[str, str, str], int] = {}
    for d in decisions:
        key: tuple[str, str, str] = (shard, d.status, d.reason or "")
        counts[key] = counts.get(key, 0) + 1
    for key, n in counts.items():
        child = _decision_children.get(key)
        if child is None:
            child = _decision_children[key] = DECISIONS.labels(*key)
        child.inc(n)


def observe_decision_latency(shard: str, now_ms: float, accepted_at_ms: Iterable[int]) -> None:
    child = _latency_children.get(shard)
    if child is None:
        child = _latency_children[shard] = DECISION_LATENCY.labels(shard)
    observe_many(child, [max(0.0, now_ms - accepted) / 1000 for accepted in accepted_at_ms])


def observe_step(shard: str, step: Step, intents: list[Intent]) -> None:
    """A committed step's decisions, latencies, duplicates, refusals and stock."""
    new_ids = {d.id for d in step.inserts}
    t = time.time() * 1000
    drawn = set(step.drawn)
    count_decisions(shard, itertools.chain(step.inserts, step.updates.values()))
    # A draw's purchases wait for it on purpose.
    observe_decision_latency(shard, t, (d.accepted_at_ms for d in step.inserts if d.sku not in drawn))
    refused = {r.key for r in step.refusals if r.kind == "purchase"}
    dupes = sum(1 for i in intents
                if isinstance(i, Purchase) and i.id not in new_ids and i.id not in refused)
    if dupes:
        DUPLICATES.labels(shard).inc(dupes)
    for r in step.refusals:
        REFUSALS.labels(shard, r.kind, r.reason[:REFUSAL_REASON_LABEL_MAX_CHARS]).inc()
    for sku in step.skus.values():
        STOCK_REMAINING.labels(sku.sku).set(sku.remaining)
