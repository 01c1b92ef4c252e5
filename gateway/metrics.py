"""Prometheus metrics of a gateway process. They live in the default registry, which is the
one flashsale.status serves on the gateway's /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# -- payment jobs (gateway.worker) --------------------------------------------------------------
JOBS = Counter("gateway_jobs_total", "Payment jobs finished, by outcome", ["outcome"])
JOB_SECONDS = Histogram(
    "gateway_job_seconds", "Time from job start to confirm/release",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
JOBS_INFLIGHT = Gauge("gateway_jobs_inflight", "Payment jobs being worked on")
PSP_RETRIES = Counter("gateway_psp_retries_total", "Transient PSP failures retried", ["step"])
DEADLETTERS = Counter("gateway_deadletters_total", "Jobs sent to the dead-letter stream", ["reason"])
COMPENSATIONS = Counter(
    "gateway_compensations_total", "Refunds and voids after a refused confirm", ["action"]
)

# -- PSP HTTP calls (gateway.psp) ---------------------------------------------------------------
PSP_CALLS = Counter("gateway_psp_calls_total", "PSP HTTP calls by operation and outcome", ["op", "outcome"])
PSP_SECONDS = Histogram(
    "gateway_psp_call_seconds", "PSP HTTP call latency", ["op"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
