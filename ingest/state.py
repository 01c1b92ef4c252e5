"""What one ingest process holds: its connections and caches, built already connected.

Ingest keeps no state that matters: everything it remembers is a cache of the result stream, so
any instance answers any request and a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import nats
from aiohttp import web
from nats.aio.client import Client as NATS

from config.settings import Settings
from flashsale.jetstream import ensure_streams
from flashsale.logs import kv
from ingest import metrics
from ingest.edge import Edge
from ingest.listener import ResultsListener
from ingest.publisher import Publisher
from ingest.ratelimit import RateLimiter
from ingest.readmodel import ReadModel
from ingest.results import ResultsHub

log = logging.getLogger("ingest")

POOL_SIZE_MAX = 10
READY_DB_TIMEOUT_S = 1.0
JETSTREAM_TIMEOUT_S = 5.0


class Ingest:
    def __init__(
        self,
        settings: Settings,
        nc: NATS,
        pool: asyncpg.Pool,
        hub: ResultsHub,
        listener: ResultsListener,
        publisher: Publisher,
        reads: ReadModel,
        closing: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.names = settings.names
        self.nc = nc
        self.pool = pool
        self.hub = hub
        self.listener = listener
        self.publisher = publisher
        self.reads = reads
        self.closing = closing
        # Per-buyer token bucket on purchases; None when configured off (user_rate_per_s = 0).
        self.limiter = (
            RateLimiter(settings.user_rate_per_s, settings.user_burst, settings.rate_limit_users_max)
            if settings.user_rate_per_s > 0 else None
        )

    @classmethod
    async def connect(cls, settings: Settings, edge: Edge) -> Ingest:
        # Waits are capped as the edge sized them from the fd limit, not by waiters_max alone.
        hub = ResultsHub(settings.results_cache_max, edge.limits.waits_max, edge.waits)
        closing = asyncio.Event()
        listeners: list[ResultsListener] = []  # the reconnect callback needs the listener

        async def on_error(exc: Exception) -> None:
            log.warning("nats error", extra=kv(error=repr(exc)))

        async def on_disconnected() -> None:
            if not closing.is_set():
                log.warning("nats disconnected")

        async def on_reconnected() -> None:
            log.info("nats reconnected")
            for listener in listeners:
                listener.on_reconnected()

        nc = await nats.connect(
            settings.nats_url, name="flashsale-ingest", max_reconnect_attempts=-1,
            reconnect_time_wait=0.5, error_cb=on_error, disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )
        js = nc.jetstream(timeout=JETSTREAM_TIMEOUT_S)
        await ensure_streams(js, settings)
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=POOL_SIZE_MAX)
        publisher = await Publisher.start(nc, settings.inflight_max)
        listener = ResultsListener(js, settings.names, hub)
        listeners.append(listener)
        await listener.start()
        reads = ReadModel(settings.names, settings.shards, pool, publisher, hub)
        await reads.load_skus()
        metrics.INFLIGHT.set_function(lambda: publisher.inflight)
        metrics.WAITERS.set_function(lambda: hub.watch_count)
        log.info("ingest connected", extra=kv(nats=settings.nats_url, namespace=settings.namespace))
        return cls(settings, nc, pool, hub, listener, publisher, reads, closing)

    async def close(self) -> None:
        self.closing.set()
        await self.listener.stop()
        await self.publisher.stop()
        try:
            await self.nc.drain()
        except Exception:  # closing anyway
            pass
        await self.pool.close()

    async def ready(self) -> bool:
        if not self.nc.is_connected or not self.listener.listening:
            return False
        try:
            await self.pool.fetchval("SELECT 1", timeout=READY_DB_TIMEOUT_S)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            return False
        return True


STATE = web.AppKey("ingest", Ingest)
