"""flashsale as a system under test: its committers and ingest processes, its batch counters
(ingest's intent messages, the committers' batches) and its JetStream backlog."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from bench.buyers import bench_settings
from bench.invariants import Invariants, check_invariants, db_decisions
from bench.systems import BatchCounters, Place, System, new_database, put_skus, run_numbers, wait_ready
from committer.schema import apply_schema
from config.settings import Settings
from flashsale.ports import free_port, free_port_block
from flashsale.supervision import instance_name, instance_port
from launch import processes as procs

_BATCH_SERIES = {
    "flashsale_ingest_intent_batches": "batches",
    "flashsale_ingest_batched_intents": "intents",
    "flashsale_ingest_intent_batch_store_seconds": "store_s",
}

# The committer's histogram of intents per committed batch: its count and sum, every shard.
_COMMIT_SERIES = {"flashsale_batch_size_count": "commits", "flashsale_batch_size_sum": "committed_intents"}


def batch_counters(ingest_lines: list[str], committer_lines: list[str]) -> BatchCounters:
    """The batch counters in every ingest's and every committer's /metrics text, summed."""
    totals = dict.fromkeys([*_BATCH_SERIES.values(), *_COMMIT_SERIES.values()], 0.0)
    for line in ingest_lines:
        name, _, value = line.partition(" ")
        if name in _BATCH_SERIES:
            totals[_BATCH_SERIES[name]] += float(value)
    for line in committer_lines:
        name, _, value = line.partition("{")  # one series per shard label
        if name in _COMMIT_SERIES:
            totals[_COMMIT_SERIES[name]] += float(value.rsplit(" ", 1)[1])
    return BatchCounters(**totals)


async def start_flashsale(place: Place, processes: list[procs.Process], shards: int,
                          ingests: int) -> tuple[Settings, Path, list[str]]:
    """Starts the committers and ingest of a fresh flashsale (own database and namespace);
    returns its settings, log directory and the /metrics URL of each ingest process."""
    n = next(run_numbers)
    database_url = await new_database(place.postgres, f"bench_fs_{n}")
    await apply_schema(database_url, shards)
    s = bench_settings(
        nats_url=place.nats.url, database_url=database_url, stream_replicas=place.nats.replicas,
        # A cluster's nodes keep nats-server's default sync interval: the quorum is the durability.
        require_sync_always=place.nats.nodes == 1,
        namespace=f"b{n}", shards=shards, ingest_port=free_port(),
        committer_metrics_port=free_port_block(shards), data_dir=str(place.root / f"fs{n}"),
        log_level="WARNING",
    )
    log_dir = place.root / "logs" / f"fs{n}"
    committers = [procs.committer(s, shard, log_dir).start() for shard in range(shards)]
    processes.extend(committers)
    for shard, committer in enumerate(committers):
        await wait_ready(committer, procs.committer_ready_url(s, shard))
    metrics_urls = []
    metrics_port = free_port_block(ingests)
    for i in range(ingests):
        # Each process serves its own /metrics, on a loopback port of its own (as under dev).
        own = msgspec.structs.replace(s, ingest_metrics_port=instance_port(metrics_port, i))
        ingest = procs.ingest(own, log_dir, instance_name("ingest", i)).start()
        processes.append(ingest)
        metrics_urls.append(procs.ingest_metrics_url(own))
        # One at a time: with a shared port, readiness only proves *some* process answers,
        # so each is checked before the next one starts.
        await wait_ready(ingest, procs.ingest_ready_url(s))
    return s, log_dir, metrics_urls


@dataclass(kw_only=True)
class Flashsale(System):
    """ingest + one committer per shard (`python -m ingest`, `python -m committer --shard N`)."""

    shards: int
    ingests: int  # ingest processes sharing the port (SO_REUSEPORT)
    settings: Settings
    nc: Client
    js: JetStreamContext
    http: aiohttp.ClientSession
    metrics_urls: list[str]

    @classmethod
    async def launch(cls, place: Place, processes: list[procs.Process], shards: int,
                     ingests: int) -> Flashsale:
        settings, _, metrics_urls = await start_flashsale(place, processes, shards, ingests)
        nc = await nats.connect(servers=place.nats.servers)
        return cls(name=place.name, root=place.root, postgres=place.postgres, nats=place.nats,
                   port=settings.ingest_port, database_url=settings.database_url, processes=processes,
                   shards=shards, ingests=ingests, settings=settings, nc=nc, js=nc.jetstream(),
                   http=aiohttp.ClientSession(), metrics_urls=metrics_urls)

    def label(self) -> str:
        return (f"flashsale/{self.shards}sh" + (f"/{self.ingests}in" if self.ingests > 1 else "")
                + (f"/r{self.nats.replicas}" if self.nats.nodes > 1 else ""))

    async def close(self) -> None:
        await self.nc.close()
        await self.http.close()

    async def seed(self, stock_by_sku: dict[str, int]) -> None:
        await put_skus(self.base_url, stock_by_sku,
                            {"Authorization": f"Bearer {self.settings.admin_token}"}, {"payment": "none"})
        # The PUT may answer before the committer has written the SKU: wait for the rows.
        conn = await asyncpg.connect(self.database_url)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                have = await conn.fetchval(
                    "SELECT count(*) FROM skus WHERE sku = ANY($1::text[])", list(stock_by_sku))
                if have == len(stock_by_sku):
                    return
                await asyncio.sleep(0.1)
            raise TimeoutError(f"only {have}/{len(stock_by_sku)} SKUs reached Postgres")
        finally:
            await conn.close()

    def committer_metrics_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{procs.committer_status_port(self.settings, shard)}/metrics"
                for shard in range(self.shards)]

    async def _metric_lines(self, urls: list[str] | None = None) -> list[str]:
        """Every ingest process's /metrics (or those of `urls`), as lines."""
        lines: list[str] = []
        for url in self.metrics_urls if urls is None else urls:
            async with self.http.get(url) as r:
                lines += (await r.text()).splitlines()
        return lines

    async def live(self) -> tuple[int, int | None]:
        """Answers to POST /v1/purchases so far, from every ingest process's own counter."""
        answered = 0.0
        for line in await self._metric_lines():
            if line.startswith("flashsale_ingest_requests_total{") and "purchases" in line:
                answered += float(line.rsplit(" ", 1)[1])
        return int(answered), await self.backlog()

    async def batch_counters(self) -> BatchCounters | None:
        return batch_counters(await self._metric_lines(),
                              await self._metric_lines(self.committer_metrics_urls()))

    async def backlog(self) -> int | None:
        """Intents published but not yet acked by their committer (JetStream's own count)."""
        names = self.settings.names
        total = 0
        try:
            for shard in range(self.shards):
                info = await self.js.consumer_info(
                    names.intents_stream(shard), names.committer_durable(shard))
                total += info.num_pending + info.num_ack_pending
        except Exception:  # another consumer naming: the live line shows "?" instead
            return None
        return total

    async def drain(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        conn = await asyncpg.connect(self.database_url)
        try:
            last, stable_since = -1, time.monotonic()
            while time.monotonic() < deadline:
                backlog = await self.backlog()
                rows = await conn.fetchval("SELECT count(*) FROM purchases")
                if rows != last:
                    last, stable_since = rows, time.monotonic()
                if backlog == 0 or (backlog is None and time.monotonic() - stable_since > 2):
                    return True
                await asyncio.sleep(0.2)
            return False
        finally:
            await conn.close()

    async def invariants(self, accepted_ids: set[str], stock: int,
                         repeat_skus: list[str]) -> Invariants:
        conn = await asyncpg.connect(self.database_url)
        try:
            return await check_invariants(conn, accepted_ids, stock, "skus", "purchases",
                                "s.reserved + s.sold > s.stock", "s.reserved + s.sold", repeat_skus)
        finally:
            await conn.close()

    async def decisions_between(self, start_ms: int, end_ms: int) -> tuple[int, list[float], list[int]]:
        return await db_decisions(self.database_url, "purchases", start_ms, end_ms)
