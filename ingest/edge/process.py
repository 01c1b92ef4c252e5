"""The edge of one process: its sized limits and what each client holds right now; the
admission step that finds each request's client and applies its rate, and the body deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import msgspec
from aiohttp import web

from config.settings import Settings
from flashsale.head_guard import guard_answers
from ingest import metrics, problems
from ingest.edge.clients import CLIENT, Trusted, client_ip
from ingest.edge.connections import ConnectionGuard
from ingest.edge.flooding import FLOOD_REFUSALS_MIN, Flooding
from ingest.edge.limits import CLIENTS_TRACKED_MAX, EdgeLimits
from ingest.edge.refusals import note_refusal, refused
from ingest.edge.waits import WaitBudget
from ingest.ratelimit import RateLimiter

# Probes are never rate limited: an orchestrator must see the process as it is. (/metrics is not
# on this port at all: ingest_metrics_port.)
RATE_EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})


class Edge:
    """One ingest process's edge: its sized limits and what each client holds right now."""

    def __init__(self, settings: Settings, limits: EdgeLimits) -> None:
        self.limits = limits
        self.trusted = Trusted.parse(settings.trusted_proxies)
        self.body_timeout_s = settings.body_timeout_s
        self.retry_after_s = settings.retry_after_s
        self.connections = ConnectionGuard(limits, self.trusted)
        self.waits = WaitBudget.for_limits(limits, settings.retry_after_s)
        self.head_max_bytes = settings.head_max_bytes
        self.body_max_bytes = settings.body_max_bytes
        self.guard_answers = guard_answers(settings.head_max_bytes)
        self.client_rate_per_s = settings.client_rate_per_s
        # None when configured off (client_rate_per_s = 0): load tests run from one address.
        self.rate = (
            RateLimiter(settings.client_rate_per_s, settings.client_burst, CLIENTS_TRACKED_MAX)
            if settings.client_rate_per_s > 0 else None
        )
        self.flooding = Flooding(max(FLOOD_REFUSALS_MIN, settings.client_burst))
        metrics.CONNECTIONS.set_function(lambda: self.connections.open)
        for name, value in msgspec.structs.asdict(limits).items():
            metrics.EDGE_LIMITS.labels(name).set(value)

    def admit_connection(self, peer: str) -> bool:
        if self.flooding.holds(peer, time.monotonic()):
            note_refusal("rate_client_connection", peer)
            return False
        reason = self.connections.admit(peer)
        if reason is None:
            return True
        note_refusal(reason, peer)
        return False

    def admit(self, peer: str, forwarded_for: Iterable[str], rated: bool = True) -> str:
        """The client of a request from `peer` (clients.client_ip), its request rate applied
        when `rated` (a 429 when it is over)."""
        client = client_ip(peer, forwarded_for, self.trusted)
        if rated:
            self.check_rate(client, direct=client == peer)
        return client

    def check_rate(self, client: str, direct: bool = True) -> None:
        """Apply the client's request rate (`direct`: the client is the connection's peer,
        not a client behind a trusted proxy)."""
        if self.rate is None:
            return
        now_s = time.monotonic()
        wait_s = self.rate.acquire(client, now_s)
        if not wait_s:
            return
        retry_after_s = RateLimiter.retry_after_s(wait_s)
        close = direct and self.flooding.refused(client, now_s, now_s + retry_after_s)
        raise refused(
            "rate_client", client, retry_after_s,
            f"client {client} sends requests faster than {self.client_rate_per_s:g}/s",
            close=close,
        )


EDGE = web.AppKey("edge", Edge)


def client_step(edge: Edge) -> Callable[[web.Request], None]:
    """The step of the admission middleware that finds the client of each request
    (`client_of`) and applies its request rate; admission answers and counts the 429. A step,
    not a middleware of its own: every layer of middleware is one more coroutine that each
    request creates and that every suspension of its handler passes through."""

    def admit_client(request: web.Request) -> None:
        request[CLIENT] = edge.admit(request.remote or "", request.headers.getall("X-Forwarded-For", ()),
                                     rated=request.path not in RATE_EXEMPT_PATHS)

    return admit_client


async def read_body(request: web.Request) -> bytes:
    """The request body, or a 408 if it does not arrive within `body_timeout_s`: aiohttp's
    idle timeout does not run while a handler reads, so a trickled body would hold on for ever."""
    edge = request.app[EDGE]
    content = request.content
    if content.is_eof():  # the whole body came with the head (nearly every purchase)
        # Taken from the buffer as it is: no timer, and none of request.read()'s coroutines
        # and copies. Its size limit is applied as request.read() would (a chunked body, or a
        # compressed one inflated, may be larger than its head said).
        body = content.read_nowait()
        if len(body) > request.client_max_size:
            raise web.HTTPRequestEntityTooLarge(request.client_max_size, len(body))
        return body
    try:
        async with asyncio.timeout(edge.body_timeout_s):
            return await request.read()
    except TimeoutError:
        note_refusal("body_timeout", request.get(CLIENT) or request.remote or "")
        raise problems.Rejection(
            408, "request_timeout", "Request timeout",
            f"the request body did not arrive within {edge.body_timeout_s:g} s",
            headers={"Connection": "close"},
        ) from None
