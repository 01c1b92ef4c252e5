"""`python -m ingest`: the HTTP tier, configured from the environment (config.settings.load).

The app runs behind `edge.protocol.GuardedProtocol` (connection caps, request heads) on a server made by
flashsale.serving rather than `web.run_app`, so that every accepted connection is counted before
aiohttp sees it. /metrics is served apart, with this process's own /readyz, on
`ingest_metrics_port` on loopback (0: not at all).
"""

from __future__ import annotations

import asyncio
import logging
import signal

import msgspec
import uvloop
from aiohttp import web

from config.settings import Settings, load_or_exit
from flashsale import serving, shardmap
from flashsale.heap import settle_heap
from flashsale.logs import kv, setup
from flashsale.shardmap import ShardMapError
from ingest.app import create_app, create_metrics_app
from ingest.edge.limits import ACCEPT_BACKLOG, EdgeLimits, raise_fd_limit, size_limits
from ingest.edge.process import Edge
from ingest.edge.protocol import GuardedProtocol
from ingest.edge.refusals import BadRequestLog
from ingest.lean import LeanRoute

log = logging.getLogger("ingest")

SHUTDOWN_TIMEOUT_S = 5.0
METRICS_HOST = "127.0.0.1"
EXIT_CONFIG = 2  # cannot serve as configured (the metrics port is taken, another shard map)
# How soon a running ingest notices a reshard it was not restarted for (it would route SKUs by
# the old count meanwhile).
SHARD_MAP_CHECK_S = 5.0


def main() -> None:
    settings = load_or_exit("ingest")
    setup("ingest", settings.log_level)
    # Per-request access logs would cost more than the request itself at peak.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # A request aiohttp cannot parse: a counted refusal logged once per client per interval,
    # instead of a traceback each time.
    logging.getLogger("aiohttp.server").addFilter(BadRequestLog())
    limits = size_limits(settings, raise_fd_limit())
    log.info("edge limits", extra=kv(
        **msgspec.structs.asdict(limits), idle_timeout_s=settings.idle_timeout_s,
        body_timeout_s=settings.body_timeout_s, client_rate_per_s=settings.client_rate_per_s,
        client_burst=settings.client_burst, trusted_proxies=settings.trusted_proxies,
        head_max_bytes=settings.head_max_bytes,
    ))
    try:
        uvloop.run(serve(settings, limits))
    except MetricsPortTaken as e:
        log.error("cannot serve /metrics: each ingest process needs its own ingest_metrics_port",
                  extra=kv(port=e.port, error=repr(e.__cause__)))
        raise SystemExit(EXIT_CONFIG) from None
    except ShardMapError as e:
        log.error(f"refusing to serve: {e}")
        raise SystemExit(EXIT_CONFIG) from None


class MetricsPortTaken(Exception):
    def __init__(self, port: int) -> None:
        super().__init__(f"port {port} is taken")
        self.port = port


async def serve_metrics(port: int, app: web.Application, retry_after_s: int) -> serving.Served | None:
    """/metrics and /readyz of this process (`app`: the one create_app made) on `port` on
    loopback (None: port 0, neither). Not SO_REUSEPORT: with several processes on one port a
    scrape or a readiness probe would read whichever answered."""
    if not port:
        return None
    try:
        served = await serving.serve_app(create_metrics_app(app, retry_after_s), METRICS_HOST, port)
    except OSError as e:
        raise MetricsPortTaken(port) from e
    log.info("ingest metrics listening", extra=kv(host=METRICS_HOST, port=port))
    return served


async def serve(settings: Settings, limits: EdgeLimits) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, finish requests and disconnect."""
    front = Edge(settings, limits)
    app = create_app(settings, front)
    lean = LeanRoute(app, front)
    metrics_served = await serve_metrics(settings.ingest_metrics_port, app, settings.retry_after_s)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The app's startup connects NATS and Postgres (its cleanup context).
    served = await serving.serve_app(
        app, settings.ingest_host, settings.ingest_port,
        head_max_bytes=settings.head_max_bytes,
        guard=lambda make_handler, _: GuardedProtocol(
            make_handler, front, lean.take if settings.lean_purchases else None),
        # Closes a connection idle this long, and one whose request head is not complete this
        # long after the connection (or its previous request) ended: the slow-head deadline.
        keepalive_timeout=settings.idle_timeout_s,
        # A client that goes away ends its handler: a long-poll gives its wait slot back at once
        # instead of holding it (and the buyer's per-buyer budget) until its wait runs out.
        handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        # Ingest is stateless: more processes on the same port (SO_REUSEPORT) use more cores.
        reuse_port=True, backlog=ACCEPT_BACKLOG,
    )
    settle_heap()  # started: what exists now lives as long as the process
    log.info("ingest listening", extra=kv(host=settings.ingest_host, port=settings.ingest_port))
    resharded = asyncio.create_task(
        shardmap.changed(settings.database_url, settings.shards, SHARD_MAP_CHECK_S))
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((resharded, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        log.info("ingest stopping")
        for task in (resharded, stopped):
            task.cancel()
        served.server.close()
        await lean.drain(SHUTDOWN_TIMEOUT_S)  # aiohttp waits for the answers it gives, not these
        await served.cleanup()
        if metrics_served is not None:
            await metrics_served.cleanup()
    if resharded.done() and not resharded.cancelled():
        raise resharded.result()


if __name__ == "__main__":
    main()
