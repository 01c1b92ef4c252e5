"""The committer's per-batch metric calls count every decision once."""

from committer import metrics
from proto.messages import Decision, Reason, Status


def _decision(n: int, status: Status, reason: Reason | None, accepted_at_ms: int = 0) -> Decision:
    return Decision(id=f"p{n}", sku="hot", user_id=f"u{n}", qty=1, status=status, reason=reason,
                    amount_cents=0, accepted_at_ms=accepted_at_ms, decided_at_ms=0, updated_at_ms=0)


def _count(shard: str, status: str, reason: str) -> float:
    return metrics.DECISIONS.labels(shard, status, reason)._value.get()


def test_count_decisions_counts_each_decision_under_its_status_and_reason() -> None:
    batch = [_decision(0, "reserved", None), _decision(1, "rejected", "sold_out"),
             _decision(2, "reserved", None), _decision(3, "rejected", "sold_out"),
             _decision(4, "rejected", "limit_exceeded")]
    before = {k: _count("t9", *k) for k in (("reserved", ""), ("rejected", "sold_out"),
                                            ("rejected", "limit_exceeded"))}
    metrics.count_decisions("t9", batch)
    metrics.count_decisions("t9", batch[:1])
    assert _count("t9", "reserved", "") - before[("reserved", "")] == 3
    assert _count("t9", "rejected", "sold_out") - before[("rejected", "sold_out")] == 2
    assert _count("t9", "rejected", "limit_exceeded") - before[("rejected", "limit_exceeded")] == 1


def test_observe_decision_latency_observes_each_purchase_in_seconds() -> None:
    child = metrics.DECISION_LATENCY.labels("t8")
    metrics.observe_decision_latency("t8", 10_000, [9_000, 9_990, 20_000])  # a future one is 0
    samples = {s.name: s.value for s in child._child_samples()}
    assert samples["_count"] == 3
    assert samples["_sum"] == 1.01
