"""Prometheus metrics of one ingest instance, in a registry of its own: /metrics shows ingest's
series and process CPU/memory, not whatever an imported library registered globally."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

REQUESTS = Counter(
    "flashsale_ingest_requests_total", "HTTP requests by route and status", ["route", "status"],
    registry=REGISTRY,
)
# Buckets in seconds, dense where the product target is (p99 <= 100 ms to a decision).
_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)
ACCEPT_LATENCY = Histogram(
    "flashsale_ingest_accept_seconds", "POST /v1/purchases to its 202 (includes the JetStream ack)",
    buckets=_LATENCY_BUCKETS_S, registry=REGISTRY,
)
DECISION_LATENCY = Histogram(
    "flashsale_ingest_decision_seconds",
    "Purchase accepted_at to its first decision arriving on this instance's result stream",
    buckets=_LATENCY_BUCKETS_S, registry=REGISTRY,
)
INFLIGHT = Gauge(
    "flashsale_ingest_inflight_publishes", "Publishes awaiting a JetStream ack", registry=REGISTRY
)
# Counters read at scrape time from the batcher (a Gauge with a function: no per-batch cost).
INTENT_BATCHES = Gauge(
    "flashsale_ingest_intent_batches", "Batches of intents sent to JetStream (monotonic)", registry=REGISTRY
)
BATCHED_INTENTS = Gauge(
    "flashsale_ingest_batched_intents", "Intents sent in those batches (monotonic)", registry=REGISTRY
)
LEAN_REQUESTS = Gauge(
    "flashsale_ingest_lean_requests",
    "POST /v1/purchases answered on the lean path, the rest through aiohttp (monotonic)",
    registry=REGISTRY,
)
INTENT_BATCH_STORE_SECONDS = Gauge(
    "flashsale_ingest_intent_batch_store_seconds",
    "Seconds those batches took from their first publish to JetStream's answer, summed (monotonic)",
    registry=REGISTRY,
)
WAITERS = Gauge("flashsale_ingest_waiters", "Long-polls waiting for a decision", registry=REGISTRY)
EVENT_STREAMS = Gauge(
    "flashsale_ingest_event_streams", "Open Server-Sent Event streams, by kind (purchase, sku)",
    ["kind"], registry=REGISTRY,
)
REJECTS = Counter(
    "flashsale_ingest_rejects_total", "Requests refused by ingest itself, by reason", ["reason"],
    registry=REGISTRY,
)
SHEDS = Counter(
    "flashsale_ingest_sheds_total", "Requests shed for overload (503), by cause", ["cause"],
    registry=REGISTRY,
)
# Edge limits (ingest.edge): what is refused to protect the process, and the caps it was sized to.
EDGE_REFUSALS = Counter(
    "flashsale_ingest_edge_refusals_total",
    "Connections closed at once or requests refused (429/408) to keep one client from taking the "
    "process, by reason", ["reason"], registry=REGISTRY,
)
CONNECTIONS = Gauge("flashsale_ingest_connections", "Open client connections", registry=REGISTRY)
EDGE_LIMITS = Gauge(
    "flashsale_ingest_edge_limit", "Edge caps as sized at start from the fd limit", ["limit"],
    registry=REGISTRY,
)

_request_children: dict[tuple[str, int], Counter] = {}


def count_request(route: str, status: int) -> None:
    # labels() parses and hashes its arguments on every call; the child is cached instead. Routes
    # and statuses are a small fixed set, so the dict stays small.
    key = (route, status)
    child = _request_children.get(key)
    if child is None:
        child = _request_children[key] = REQUESTS.labels(route, str(status))
    child.inc()


def answered(route: str, status: int, started_s: float) -> None:
    """A request answered (aiohttp's route or the lean path), `started_s` its perf_counter at
    admission: counted by route and status, and a purchase's 202 timed."""
    count_request(route, status)
    if route == "/v1/purchases" and status == 202:
        ACCEPT_LATENCY.observe(time.perf_counter() - started_s)
