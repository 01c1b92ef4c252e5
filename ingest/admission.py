"""Edge admission: what ingest refuses before (or instead of) doing any work.

- body size: a declared Content-Length over body_max_bytes is a 413 before the body is read
  (a chunked body is cut off at the same limit by aiohttp's client_max_size);
- load shedding: a write while NATS is disconnected or with inflight_max publishes already
  awaiting their ack is a 503 + Retry-After at once, instead of a request queueing until it
  times out;
- the per-buyer rate limit (`ratelimit.RateLimiter`, 429) and the sold-out fast path need the
  parsed body, so the purchase handler applies them itself (see purchases.create_purchase);
  they are documented with the rest of admission here.

The same middleware answers every error a handler raises as problem+json (`ingest.failures`:
infrastructure failures as 503s rather than 500s) and counts requests for /metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ingest import metrics, problems
from ingest.failures import problem_response

# Routes that publish an intent and so are shed when publishing cannot keep up.
_PUBLISHING_ROUTES = frozenset(
    {"/v1/purchases", "/v1/purchases/{id}/cancel", "/v1/admin/skus/{sku}"}
)


def middleware(
    check_capacity: Callable[[], None], body_max_bytes: int, retry_after_s: int,
    admit_client: Callable[[web.Request], None] | None = None,
) -> Middleware:
    """`check_capacity` raises Overloaded when publishing cannot keep up; `admit_client` finds
    the request's client and applies its rate (ingest.edge.process.client_step; None: no
    client step). One layer for all of it: each layer of middleware is one more coroutine per
    request, which every suspension of the handler passes through."""

    @web.middleware
    async def admission(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        try:
            if request.method in ("POST", "PUT"):
                declared = request.content_length
                if declared is not None and declared > body_max_bytes:
                    raise problems.Rejection(  # counted in REJECTS by its slug, as every refusal
                        413, "body_too_large", "Body too large",
                        f"request body is limited to {body_max_bytes} bytes",
                    )
                if route in _PUBLISHING_ROUTES:
                    check_capacity()
            if admit_client is not None:
                admit_client(request)
            response = await handler(request)
        except Exception as exc:  # each kind answered as its problem (ingest.failures)
            response = problem_response(exc, request.method, route, retry_after_s)
        metrics.answered(route, response.status, started)
        return response

    return admission
