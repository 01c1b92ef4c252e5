"""`python -m ingest`: the HTTP tier, configured from the environment (config.settings.load).

The app runs behind `edge.GuardedProtocol` (connection caps) on a server made here, rather than
with `web.run_app`, so that every accepted connection is counted before aiohttp sees it.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import msgspec
import uvloop
from aiohttp import web

from config.settings import Settings, load
from flashsale.logs import kv, setup
from ingest import edge
from ingest.app import create_app

log = logging.getLogger("ingest")

SHUTDOWN_TIMEOUT_S = 5.0


def main() -> None:
    settings = load()
    setup("ingest", settings.log_level)
    # Per-request access logs would cost more than the request itself at peak.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    limits = edge.size_limits(settings, edge.raise_fd_limit())
    log.info("edge limits", extra=kv(
        **msgspec.structs.asdict(limits), idle_timeout_s=settings.idle_timeout_s,
        body_timeout_s=settings.body_timeout_s, client_rate_per_s=settings.client_rate_per_s,
        client_burst=settings.client_burst, trusted_proxies=settings.trusted_proxies,
    ))
    uvloop.run(serve(settings, limits))


async def serve(settings: Settings, limits: edge.EdgeLimits) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, finish requests and disconnect."""
    front = edge.Edge(settings, limits)
    runner = web.AppRunner(
        create_app(settings, front), access_log=None, handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        # Closes a connection idle this long, and one whose request head is not complete this
        # long after the connection (or its previous request) ended: the slow-head deadline.
        keepalive_timeout=settings.idle_timeout_s, lingering_time=edge.LINGER_S,
        # A client that goes away ends its handler: a long-poll gives its wait slot back at once
        # instead of holding it (and the buyer's per-buyer budget) until its wait runs out.
        handler_cancellation=True,
    )
    await runner.setup()  # connects NATS and Postgres (the app's cleanup context)
    handlers = runner.server
    if handlers is None:
        raise RuntimeError("aiohttp runner has no server after setup()")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(
        lambda: edge.GuardedProtocol(handlers, front), settings.ingest_host, settings.ingest_port,
        # Ingest is stateless: more processes on the same port (SO_REUSEPORT) use more cores.
        reuse_port=True, backlog=edge.ACCEPT_BACKLOG,
    )
    log.info("ingest listening", extra=kv(host=settings.ingest_host, port=settings.ingest_port))
    try:
        await stop.wait()
    finally:
        log.info("ingest stopping")
        server.close()
        await runner.cleanup()


if __name__ == "__main__":
    main()
