"""What a bench run measured: one `PhaseResult` per phase, one `SystemRun` per system and
scenario (results.json is these, encoded)."""

from __future__ import annotations

import msgspec

from bench.disk import FlushFigures
from bench.drop import DropFigures
from bench.genspec import Mode
from bench.invariants import Invariants
from bench.paid import PaidFigures
from bench.stats import LatencySummary


class GroupCommit(msgspec.Struct, kw_only=True):
    """flashsale's intent batches over a load window, from ingest's own counters."""

    batches_per_s: float
    intents_per_batch: float
    store_ms_per_batch: float  # first publish of a batch to JetStream's answer, mean
    # The committers' batches (one Postgres transaction each), from their own histogram.
    commits_per_s: float | None = None
    intents_per_commit: float | None = None


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
    # POST -> the decided state on the purchase's event stream (flashsale's open-loop phases)
    stream_decision: LatencySummary = msgspec.field(default_factory=LatencySummary)
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
    group_commit: GroupCommit | None = None  # flashsale only
    notes: list[str] = []


class SystemRun(msgspec.Struct, kw_only=True):
    scenario: str
    system: str
    shards: int | None = None
    phases: list[PhaseResult] = []
    invariants: Invariants = msgspec.field(default_factory=Invariants)
    drained: bool = True
    paid: PaidFigures | None = None  # the paid scenario: payment outcomes and money checks
    drop: DropFigures | None = None  # the drop scenario: each group's share of the stock


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
    acc_system: str | None = None  # the flashsale (topology) the acc_ figures are of: the fastest
    acc_vs_redis_always: float | None = None
    acc_cpu_vs_redis_always: float | None = None  # server CPU per accepted purchase


class RunResult(msgspec.Struct, kw_only=True):
    started: str
    command: str
    machine: dict[str, str]
    settings: dict[str, str]
    runs: list[SystemRun] = []
    headline: Headline = msgspec.field(default_factory=Headline)
    notes: list[str] = []
    verify_us: dict[str, float] = {}  # in-process BuyerVerifier: new token / already verified
