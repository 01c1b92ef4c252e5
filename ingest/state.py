"""What one ingest process holds: its connections and caches, built already connected.

Ingest keeps no state that matters: everything it remembers is a cache of the result stream, so
any instance answers any request and a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS

from config.errors import ConfigError
from config.settings import Settings
from flashsale import shardmap
from flashsale.credentials import postgres_pool
from flashsale.jetstream import connect_nats, ensure_streams
from flashsale.logs import kv
from flashsale.urls import without_password
from ingest import metrics
from ingest.auth import AdminGate, BuyerVerifier
from ingest.batcher import IntentBatcher
from ingest.edge.process import Edge
from ingest.follower import IntentsFollower
from ingest.listener import ResultsListener
from ingest.publisher import Publisher
from ingest.queue import ShardQueues
from ingest.ratelimit import RateLimiter
from ingest.readmodel import MISS_CLIENTS_MAX, ReadModel
from ingest.results import ResultsHub
from proto.ids import id_key

log = logging.getLogger("ingest")

POOL_SIZE_MAX = 10
READY_DB_TIMEOUT_S = 1.0
JETSTREAM_TIMEOUT_S = 5.0


class Submitting:
    """A purchase this instance is storing right now: its request, and for the same click sent
    again meanwhile (rare) a future done when the first is stored (or failed), made by that
    twin: the first request does not pay for one."""

    __slots__ = ("done", "request_hash")

    def __init__(self, request_hash: str) -> None:
        self.request_hash = request_hash
        self.done: asyncio.Future[None] | None = None

    def twin_waits(self) -> asyncio.Future[None]:
        if self.done is None:
            self.done = asyncio.get_running_loop().create_future()
        return self.done

    def finished(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


class Services:
    """The connected services one ingest process holds, passed to every handler as `svc`."""

    def __init__(
        self,
        settings: Settings,
        nc: NATS,
        pool: asyncpg.Pool,
        hub: ResultsHub,
        listener: ResultsListener,
        follower: IntentsFollower,
        publisher: Publisher,
        batcher: IntentBatcher,
        reads: ReadModel,
        buyers: BuyerVerifier,
        admin: AdminGate,
    ) -> None:
        self.settings = settings
        self.names = settings.names
        self.nc = nc
        self.pool = pool
        self.hub = hub
        self.listener = listener
        self.follower = follower
        self.publisher = publisher
        self.batcher = batcher
        self.reads = reads
        self.buyers = buyers
        self.admin = admin
        # Purchase ids being stored by a request of this process right now (bounded by the
        # requests in flight): a concurrent twin waits for the first instead of racing it.
        self.submitting: dict[str, Submitting] = {}
        self.id_key = id_key(settings.id_secret)
        # Per-buyer token bucket on purchases; None when configured off (user_rate_per_s = 0).
        self.limiter = (
            RateLimiter(settings.user_rate_per_s, settings.user_burst, settings.rate_limit_users_max)
            if settings.user_rate_per_s > 0 else None
        )

    @classmethod
    async def connect(cls, settings: Settings, edge: Edge) -> Services:
        # Configuration first: an ingest that cannot tell buyers apart must not start at all.
        buyers = BuyerVerifier.from_settings(settings)
        admin = AdminGate.from_settings(settings)
        if not settings.id_secret:
            raise ConfigError("id_secret must be set (the same on every ingest instance)")
        # Waits are capped as the edge sized them from the fd limit, not by waiters_max alone.
        queues = ShardQueues(
            settings.shards, settings.results_cache_max, settings.shard_silence_s,
            settings.shard_silent_accept_max, time.monotonic(),
        )
        hub = ResultsHub(settings.results_cache_max, edge.limits.waits_max, edge.waits, queues)
        # The reconnect callback needs the listener and the follower, made once connected.
        followers: list[ResultsListener | IntentsFollower] = []

        async def on_reconnected() -> None:
            for follower in followers:
                follower.on_reconnected()

        nc = await connect_nats(settings, "flashsale-ingest", reconnected_cb=on_reconnected)
        js = nc.jetstream(timeout=JETSTREAM_TIMEOUT_S)
        await ensure_streams(js, settings)
        pool = await postgres_pool("flashsale-ingest", settings.database_url, min_size=1,
                                   max_size=POOL_SIZE_MAX)
        # Routing by another shard count than the committers' would send SKUs to the wrong writer.
        await shardmap.check(pool, settings.shards)
        publisher = await Publisher.start(nc, settings.inflight_max)
        listener = ResultsListener(nc, js, settings.names, hub)
        followers.append(listener)
        await listener.start()
        # After the listener: a purchase decided from now on is dropped from the pending ones.
        follower = IntentsFollower(js, publisher, settings.names, settings.shards, queues)
        followers.append(follower)
        await follower.start()
        misses = (
            RateLimiter(settings.client_misses_per_s, settings.client_misses_burst, MISS_CLIENTS_MAX)
            if settings.client_misses_per_s > 0 else None
        )
        reads = ReadModel(settings.names, settings.shards, pool, follower, hub, misses)
        await reads.load_skus()
        await reads.load_skus_before_follower()  # after follower.start(), not before
        batcher = IntentBatcher(
            publisher, settings.names, settings.shards, settings.ingest_batch_max, settings.ingest_linger_ms,
            settings.ingest_batches_inflight_max, settings.inflight_max, follower.reached,
        )
        metrics.INFLIGHT.set_function(lambda: batcher.inflight)
        metrics.INTENT_BATCHES.set_function(lambda: batcher.batches)
        metrics.BATCHED_INTENTS.set_function(lambda: batcher.intents)
        metrics.INTENT_BATCH_STORE_SECONDS.set_function(lambda: batcher.store_s)
        metrics.WAITERS.set_function(lambda: hub.watch_count)
        log.info("ingest connected",
                 extra=kv(nats=without_password(settings.nats_url), namespace=settings.namespace))
        return cls(settings, nc, pool, hub, listener, follower, publisher, batcher, reads, buyers, admin)

    async def close(self) -> None:
        await self.listener.stop()
        await self.follower.stop()
        await self.batcher.close()
        await self.publisher.stop()
        try:
            await self.nc.drain()
        except Exception:  # closing anyway
            pass
        await self.pool.close()

    async def ready(self) -> bool:
        if not self.nc.is_connected or not self.listener.listening or not self.follower.following:
            return False
        try:
            await self.pool.fetchval("SELECT 1", timeout=READY_DB_TIMEOUT_S)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            return False
        return True


STATE = web.AppKey("services", Services)
