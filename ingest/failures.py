"""Every error a handler raises, as the problem+json it is answered with: a `problems.Rejection`
as itself, aiohttp's own HTTP errors (router 404/405, the 413 of an oversized chunked body) as
problems, `Overloaded` and failures of NATS or Postgres as 503 + Retry-After (the request may
succeed if retried later), anything else as a logged 500. Never a traceback to the client."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import nats.errors
from aiohttp import web

from ingest import metrics, problems
from ingest.errors import Overloaded

log = logging.getLogger("ingest.admission")

_HTTP_SLUGS = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
    415: "unsupported_media_type",
}
# Failures of NATS or Postgres: the request may succeed if retried later.
_DEPENDENCY_ERRORS = (
    nats.errors.Error, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError,
)


def problem_response(exc: Exception, method: str, route: str, retry_after_s: int) -> web.Response:
    """The answer to `exc`, raised by the handler of `method` `route`; counted by slug or cause."""
    if isinstance(exc, web.HTTPException):
        response = problems.Rejection(
            exc.status, _HTTP_SLUGS.get(exc.status, "http_error"), exc.reason, exc.text or exc.reason,
        ).response()
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    if isinstance(exc, problems.Rejection):
        if exc.status < 500:
            metrics.REJECTS.labels(exc.slug).inc()
        return exc.response()
    if isinstance(exc, Overloaded):
        metrics.SHEDS.labels(exc.cause).inc()
        return problems.overloaded(f"cannot accept right now ({exc.cause})", retry_after_s)
    if isinstance(exc, _DEPENDENCY_ERRORS):
        metrics.SHEDS.labels("dependency_error").inc()
        log.warning("dependency error on %s %s: %r", method, route, exc)
        return problems.Rejection(
            503, "dependency_unavailable", "Dependency unavailable",
            "a backing service did not answer; retry later", retry_after_s=retry_after_s,
        ).response()
    log.error("unhandled error on %s %s", method, route, exc_info=exc)
    return problems.Rejection(
        500, "internal", "Internal error", "unexpected error; it has been logged"
    ).response()
