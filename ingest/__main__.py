"""`python -m ingest`: the HTTP tier, configured from the environment (config.settings.load)."""

from __future__ import annotations

import asyncio
import logging

import uvloop
from aiohttp import web

from config.settings import load
from flashsale.logs import kv, setup
from ingest.app import create_app


def main() -> None:
    settings = load()
    log = setup("ingest", settings.log_level)
    # Per-request access logs would cost more than the request itself at peak.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    log.info("ingest starting", extra=kv(host=settings.ingest_host, port=settings.ingest_port))
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(
        create_app(settings), loop=loop, host=settings.ingest_host, port=settings.ingest_port,
        access_log=None, print=None, shutdown_timeout=5.0,
        # Ingest is stateless: more processes on the same port (SO_REUSEPORT) use more cores.
        reuse_port=True,
    )


if __name__ == "__main__":
    main()
