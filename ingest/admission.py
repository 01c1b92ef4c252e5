"""Edge admission: what ingest refuses before (or instead of) doing any work.

- body size: a declared Content-Length over body_max_bytes is a 413 before the body is read
  (a chunked body is cut off at the same limit by aiohttp's client_max_size);
- load shedding: a write while NATS is disconnected or with inflight_max publishes already
  awaiting their ack is a 503 + Retry-After at once, instead of a request queueing until it
  times out;
- the per-buyer rate limit (`ratelimit.RateLimiter`, 429) and the sold-out fast path need the
  parsed body, so the purchase handler applies them itself (see purchases.create_purchase);
  they are documented with the rest of admission here.

The same middleware answers every `problems.Rejection` a handler raises (counting it by slug),
turns every other error into problem+json, infrastructure failures into 503s
rather than 500s, and counts requests for /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
import nats.errors
from aiohttp import web
from aiohttp.typedefs import Middleware

from ingest import metrics, problems
from ingest.errors import Overloaded

log = logging.getLogger("ingest.admission")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Routes that publish an intent and so are shed when publishing cannot keep up.
_PUBLISHING_ROUTES = frozenset(
    {"/v1/purchases", "/v1/purchases/{id}/cancel", "/v1/admin/skus/{sku}"}
)
_HTTP_SLUGS = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
    415: "unsupported_media_type",
}
# Failures of NATS or Postgres: the request may succeed if retried later.
_DEPENDENCY_ERRORS = (
    nats.errors.Error, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError,
)


def middleware(
    check_capacity: Callable[[], None], body_max_bytes: int, retry_after_s: int
) -> Middleware:
    """`check_capacity` raises Overloaded when publishing cannot keep up."""

    @web.middleware
    async def admission(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        try:
            response = await _admit(request, handler, route)
        except web.HTTPException as exc:
            # Router 404/405 and aiohttp's own 413 for an oversized chunked body.
            response = problems.Rejection(
                exc.status, _HTTP_SLUGS.get(exc.status, "http_error"), exc.reason,
                exc.text or exc.reason,
            ).response()
            if exc.status == 405 and "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        except problems.Rejection as exc:
            if exc.status < 500:
                metrics.REJECTS.labels(exc.slug).inc()
            response = exc.response()
        except Overloaded as exc:
            metrics.SHEDS.labels(exc.cause).inc()
            response = problems.overloaded(f"cannot accept right now ({exc.cause})", retry_after_s)
        except _DEPENDENCY_ERRORS as exc:
            metrics.SHEDS.labels("dependency_error").inc()
            log.warning("dependency error on %s %s: %r", request.method, route, exc)
            response = problems.Rejection(
                503, "dependency_unavailable", "Dependency unavailable",
                "a backing service did not answer; retry later", retry_after_s=retry_after_s,
            ).response()
        except Exception:
            log.exception("unhandled error on %s %s", request.method, route)
            response = problems.Rejection(
                500, "internal", "Internal error", "unexpected error; it has been logged"
            ).response()
        metrics.count_request(route, response.status)
        if route == "/v1/purchases" and response.status == 202:
            metrics.ACCEPT_LATENCY.observe(time.perf_counter() - started)
        return response

    async def _admit(request: web.Request, handler: Handler, route: str) -> web.StreamResponse:
        if request.method in ("POST", "PUT"):
            declared = request.content_length
            if declared is not None and declared > body_max_bytes:
                metrics.REJECTS.labels("body_too_large").inc()
                return problems.Rejection(
                    413, "body_too_large", "Body too large",
                    f"request body is limited to {body_max_bytes} bytes",
                ).response()
            if route in _PUBLISHING_ROUTES:
                check_capacity()
        return await handler(request)

    return admission
