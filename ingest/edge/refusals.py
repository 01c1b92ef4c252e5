"""Every refusal of the edge: counted in `flashsale_ingest_edge_refusals_total{reason}` and
logged at most once per client per `REFUSAL_LOG_INTERVAL_S`, so an attack is visible without
flooding the log. `BadRequestLog` turns aiohttp's traceback for a request it cannot parse into
such a refusal."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Literal

from aiohttp.http_exceptions import HttpProcessingError

from flashsale.logs import kv
from ingest import metrics, problems
from ingest.edge.limits import CLIENTS_TRACKED_MAX

log = logging.getLogger("ingest.edge")

REFUSAL_LOG_INTERVAL_S = 10.0

Reason = Literal[
    "connections_total",  # the process holds connections_max connections
    "connections_client",  # this peer holds client_connections_max connections
    "connection_evicted",  # an idle connection of this peer was closed to admit a new one
    "waits_client",  # this client holds client_waits_max long-polls and streams
    "waits_buyer",  # this buyer holds buyer_waits_max long-polls
    "waits_total",  # the process holds waits_max long-polls: answered without waiting
    "sku_streams_total",  # the process holds sku_streams_max SKU streams: 503
    "sku_stream_slow",  # a SKU stream's client read too slowly: its stream was dropped
    "rate_client",  # this client exceeds client_rate_per_s
    "rate_client_connection",  # a client that kept asking through its 429s: connection reset
    "body_timeout",  # the body did not arrive within body_timeout_s
    "head_too_large",  # a request head exceeds head_max_bytes: 431, closed
    "bad_request_line",  # a request line that is not HTTP/1.x (HTTP/0.9, say): 400, closed
    "bad_request",  # aiohttp could not parse a request: its 400, closed
]


class RefusalLog:
    """Whether to log a refusal now: the first one of a (reason, client) pair, then at most once
    per `interval_s` with the number refused meanwhile. Pure: the caller passes the clock."""

    def __init__(self, interval_s: float = REFUSAL_LOG_INTERVAL_S,
                 keys_max: int = CLIENTS_TRACKED_MAX) -> None:
        self.interval_s = interval_s
        self.keys_max = keys_max
        # (reason, client) -> (last logged at, refused since); least recently refused first.
        self._seen: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()

    def note(self, reason: str, client: str, now_s: float) -> int | None:
        """The refusals to report (this one included) if a line is due now, else None."""
        key = (reason, client)
        logged_at, since = self._seen.pop(key, (now_s - self.interval_s, 0))
        since += 1
        due = now_s - logged_at >= self.interval_s
        self._seen[key] = (now_s, 0) if due else (logged_at, since)
        if len(self._seen) > self.keys_max:
            self._seen.popitem(last=False)
        return since if due else None


_refusals = RefusalLog()


def note_refusal(reason: Reason, who: str, detail: str = "") -> None:
    """Count a refusal; log it if it is the first for `who` (a client IP, or a buyer for
    waits_buyer) and `reason` in REFUSAL_LOG_INTERVAL_S (`detail`: of the one logged)."""
    metrics.EDGE_REFUSALS.labels(reason).inc()
    count = _refusals.note(reason, who, time.monotonic())
    if count is not None:
        log.warning("edge refusal", extra=kv(reason=reason, who=who, refused=count,
                                             interval_s=REFUSAL_LOG_INTERVAL_S,
                                             **({"detail": detail} if detail else {})))


class BadRequestLog(logging.Filter):
    """On aiohttp's server logger: a request aiohttp cannot parse (it answers 400 and closes) is
    a refusal, counted and logged once per client per interval, without a traceback. Every other
    record (a handler's unexpected exception) passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        # aiohttp's message: "Error handling request from %s", the peer address.
        args = record.args if isinstance(record.args, tuple) else ()
        note_refusal("bad_request", str(args[0]) if args else "", detail=exc.message[:200])
        return False


def refused(reason: Reason, who: str, retry_after_s: int, detail: str,
            close: bool = False) -> problems.Rejection:
    """A 429 for a client or buyer over its share (counted and logged); `close`: and the
    connection closes after it."""
    note_refusal(reason, who)
    slug = "rate_limited" if reason == "rate_client" else "too_many_waits"
    return problems.Rejection(429, slug, "Too many requests", detail, retry_after_s=retry_after_s,
                              headers={"Connection": "close"} if close else None)
