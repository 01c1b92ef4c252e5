"""The systems under test, started as real processes against one embedded NATS + PostgreSQL.

Each `System` owns a fresh database (and, for flashsale, a fresh NATS namespace) so runs never
see each other's rows; all share the same servers and so the same durable settings.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiohttp
import asyncpg
import msgspec
import nats
import psutil
from nats.aio.client import Client
from nats.js import JetStreamContext

from bench.baselines.app import SCHEMA
from bench.baselines.seckill import Seckill
from bench.buyers import bench_settings
from committer.schema import apply_schema
from config.settings import Settings, to_env
from flashsale import testing as procs
from flashsale.db import ensure_database
from flashsale.embedded import Embedded, free_port, free_port_block, wait_for_port

FINAL_OR_RESERVED = ["reserved", "confirmed", "rejected", "expired", "cancelled"]
_run_numbers = itertools.count(1)


class Invariants(msgspec.Struct):
    """All must be 0. See docs/benchmarks.md for exactly what each one counts."""

    oversold_skus: int = 0  # SKUs whose committed counters or orders exceed their stock
    duplicate_orders: int = 0  # extra rows for one buyer (each buyer makes one logical purchase)
    lost: int = 0  # ids answered 2xx with no final (or reserved) row after the drain
    id_mismatch: int = 0  # one (user, key) answered with two different ids (retry storm)
    accepted_ids: int = 0  # distinct ids answered 2xx (what `lost` was checked against)
    rows: int = 0  # order rows in the database
    sold: int = 0  # units confirmed or reserved
    stock: int = 0  # units offered


@dataclass(frozen=True)
class Place:
    """Where a system under test runs: its name, scratch directory and the shared servers."""

    name: str
    root: Path
    postgres: Embedded
    nats: Embedded


@dataclass(frozen=True)
class BatchCounters:
    """ingest's monotonic intent batch counters, summed over ingest processes."""

    batches: float
    intents: float
    store_s: float


_BATCH_SERIES = {
    "flashsale_ingest_intent_batches": "batches",
    "flashsale_ingest_batched_intents": "intents",
    "flashsale_ingest_intent_batch_store_seconds": "store_s",
}


@dataclass(kw_only=True)
class System:
    """Base: one running system under test, built by a subclass's async `launch(...)`, which
    appends every process it starts to the caller's list (so the caller stops them even when
    the launch fails half way). Subclasses know their tables."""

    name: str
    root: Path
    postgres: Embedded
    nats: Embedded
    port: int
    database_url: str
    processes: list[procs.Process]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def label(self) -> str:
        return self.name

    def cpu_groups(self) -> dict[str, list[int]]:
        """Process name -> pids whose CPU (with their children) is charged to that name."""
        groups = {p.name: [p.proc.pid] for p in self.processes if p.proc is not None}
        groups["postgres"] = [self.postgres.proc.pid]
        groups["nats-server"] = [self.nats.proc.pid]
        return groups

    def syncing_pids(self) -> dict[str, list[int]]:
        """The processes that fsync (for strace): every postgres process, nats-server, and
        whatever else the system adds (redis-server)."""
        pg = [self.postgres.proc.pid]
        try:
            pg += [c.pid for c in psutil.Process(pg[0]).children(recursive=True)]
        except psutil.Error:
            pass
        return {"postgres": pg, "nats-server": [self.nats.proc.pid]}

    async def close(self) -> None:
        """Close the harness's own connections to the system (before stop())."""

    async def seed(self, stock_by_sku: dict[str, int]) -> None:
        raise NotImplementedError

    async def live(self) -> tuple[int, int | None]:
        """(answers so far, backlog of undecided intents) for the live progress line."""
        raise NotImplementedError

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything accepted is decided. Baselines decide synchronously."""
        return True

    async def batch_counters(self) -> BatchCounters | None:
        """flashsale's intent batch counters so far (None: the system has none)."""
        return None

    async def invariants(self, accepted_ids: set[str], stock: int,
                         repeat_skus: list[str]) -> Invariants:
        raise NotImplementedError

    async def decisions_between(self, start_ms: int, end_ms: int) -> tuple[int, list[float], list[int]]:
        """(decisions decided in the window, decided-accepted latencies of those accepted in it,
        decisions per second) from the database's own timestamps."""
        return 0, [], []


async def _new_database(postgres: Embedded, name: str) -> str:
    url = postgres.url.rpartition("/")[0] + "/" + name
    await ensure_database(url)
    return url


async def _http_put_all(base_url: str, stock_by_sku: dict[str, int], headers: dict[str, str],
                        body_extra: dict[str, object]) -> None:
    """PUT every SKU, 32 at a time (bounded: the admin path is not what is measured)."""
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession(headers=headers) as http:
        async def put(sku: str, stock: int) -> None:
            async with sem:
                for attempt in range(20):
                    async with http.put(f"{base_url}/v1/admin/skus/{sku}",
                                        json={"stock": stock, **body_extra}) as r:
                        if r.status < 300:
                            return
                        text = await r.text()
                    await asyncio.sleep(0.1 * (attempt + 1))
                raise RuntimeError(f"seeding {sku} failed: {r.status} {text[:300]}")
        await asyncio.gather(*(put(s, n) for s, n in stock_by_sku.items()))


async def _wait_ready(p: procs.Process, url: str, timeout_s: float = 60.0) -> None:
    await asyncio.to_thread(p.wait_http_ok, url, timeout_s)


def _baseline_env() -> dict[str, str]:
    """The baselines load the bench's identity settings (the same as flashsale's) from here."""
    return {**os.environ, **to_env(bench_settings())}


@dataclass(kw_only=True)
class Baseline(System):
    """echo, naive or rowlock: `python -m bench.baselines.<name>`."""

    http: aiohttp.ClientSession

    @classmethod
    async def launch(cls, place: Place, processes: list[procs.Process]) -> Baseline:
        name = place.name
        port = free_port()
        args = ["--port", str(port)]
        database_url = ""
        if name != "echo":
            database_url = await _new_database(place.postgres, f"bench_{name}_{next(_run_numbers)}")
            args += ["--database-url", database_url]
        log_dir = place.root / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        p = procs.Process(name, [sys.executable, "-m", f"bench.baselines.{name}", *args],
                          _baseline_env(), log_dir / f"{name}.log").start()
        processes.append(p)
        await _wait_ready(p, f"http://127.0.0.1:{port}/readyz")
        return cls(name=name, root=place.root, postgres=place.postgres, nats=place.nats, port=port,
                   database_url=database_url, processes=processes, http=aiohttp.ClientSession())

    async def close(self) -> None:
        await self.http.close()

    async def seed(self, stock_by_sku: dict[str, int]) -> None:
        if self.name == "echo":
            return
        conn = await asyncpg.connect(self.database_url)
        try:
            await conn.executemany(
                "INSERT INTO bench_skus (sku, stock) VALUES ($1, $2)"
                " ON CONFLICT (sku) DO UPDATE SET stock = EXCLUDED.stock",
                list(stock_by_sku.items()),
            )
        finally:
            await conn.close()

    async def live(self) -> tuple[int, int | None]:
        async with self.http.get(f"{self.base_url}/bench/stats") as r:
            handled: int = (await r.json())["handled"]
        return handled, 0

    async def invariants(self, accepted_ids: set[str], stock: int,
                         repeat_skus: list[str]) -> Invariants:
        if self.name == "echo":
            return Invariants(accepted_ids=len(accepted_ids))
        conn = await asyncpg.connect(self.database_url)
        try:
            return await _check(conn, accepted_ids, stock, "bench_skus", "bench_orders",
                                "s.sold > s.stock", "s.sold", repeat_skus)
        finally:
            await conn.close()

    async def decisions_between(self, start_ms: int, end_ms: int) -> tuple[int, list[float], list[int]]:
        if self.name == "echo":
            return 0, [], []
        return await _decisions(self.database_url, "bench_orders", start_ms, end_ms)


AppendFsync = Literal["always", "everysec"]
# What each AOF policy loses on power failure, for the report's labels.
REDIS_LOSES = {
    "always": "nothing answered (AOF fsynced before the replies of each event-loop turn)",
    "everysec": "up to ~1 s of answered orders (AOF fsynced once a second)",
}


def redis_conf(port: int, data_dir: Path, appendfsync: AppendFsync) -> str:
    """redis-server's config: AOF only (no RDB snapshots), loopback, in the foreground."""
    return "\n".join([
        f"port {port}", "bind 127.0.0.1", "protected-mode yes", "daemonize no", f'dir "{data_dir}"',
        'save ""', "appendonly yes", f"appendfsync {appendfsync}", "aof-use-rdb-preamble yes",
        f'logfile "{data_dir / "redis.log"}"', "",
    ])


@dataclass(kw_only=True)
class RedisSeckill(Baseline):
    """redis-always / redis-everysec: redis-server + `python -m bench.baselines.redis_seckill` (the
    HTTP app) + `python -m bench.baselines.seckill_worker` (stream -> Postgres)."""

    appendfsync: AppendFsync
    redis_pid: int
    store: Seckill

    @classmethod
    async def launch_redis(cls, place: Place, processes: list[procs.Process],
                           appendfsync: AppendFsync) -> RedisSeckill:
        n = next(_run_numbers)
        data_dir = place.root / f"redis{n}"
        data_dir.mkdir(parents=True, exist_ok=True)
        log_dir = place.root / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        redis_port = free_port()
        conf = data_dir / "redis.conf"
        conf.write_text(redis_conf(redis_port, data_dir, appendfsync))
        server = procs.Process("redis-server", ["redis-server", str(conf)], dict(os.environ),
                               log_dir / f"redis-server-{n}.log").start()
        processes.append(server)
        await asyncio.to_thread(wait_for_port, redis_port, 20)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        database_url = await _new_database(place.postgres, f"bench_redis_{n}")
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(SCHEMA)
        finally:
            await conn.close()
        port = free_port()
        app = procs.Process(place.name, [sys.executable, "-m", "bench.baselines.redis_seckill",
                                         "--port", str(port), "--redis-url", redis_url],
                            _baseline_env(), log_dir / f"{place.name}-{n}.log").start()
        processes.append(app)
        worker = procs.Process("seckill-worker", [sys.executable, "-m", "bench.baselines.seckill_worker",
                                                  "--redis-url", redis_url, "--database-url", database_url],
                               dict(os.environ), log_dir / f"seckill-worker-{n}.log").start()
        processes.append(worker)
        await _wait_ready(app, f"http://127.0.0.1:{port}/readyz")
        assert server.proc is not None
        return cls(name=place.name, root=place.root, postgres=place.postgres, nats=place.nats, port=port,
                   database_url=database_url, processes=processes, http=aiohttp.ClientSession(),
                   appendfsync=appendfsync, redis_pid=server.proc.pid, store=Seckill.connect(redis_url, 4))

    async def close(self) -> None:
        await self.store.close()
        await super().close()

    def syncing_pids(self) -> dict[str, list[int]]:
        return {**super().syncing_pids(), "redis-server": [self.redis_pid]}

    async def seed(self, stock_by_sku: dict[str, int]) -> None:
        await super().seed(stock_by_sku)  # Postgres: the worker counts `sold` against it
        await self.store.seed(stock_by_sku)

    async def live(self) -> tuple[int, int | None]:
        handled, _ = await super().live()
        return handled, await self.store.backlog()

    async def drain(self, timeout_s: float) -> bool:
        """Until the worker has written (and acked) every order of the stream."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self.store.backlog() == 0:
                return True
            await asyncio.sleep(0.2)
        return False


async def start_flashsale(place: Place, processes: list[procs.Process], shards: int,
                          ingests: int) -> tuple[Settings, Path, list[str]]:
    """Starts the committers and ingest of a fresh flashsale (own database and namespace);
    returns its settings, log directory and the /metrics URL of each ingest process."""
    n = next(_run_numbers)
    database_url = await _new_database(place.postgres, f"bench_fs_{n}")
    await apply_schema(database_url, shards)
    s = bench_settings(
        nats_url=place.nats.url, database_url=database_url,
        namespace=f"b{n}", shards=shards, ingest_port=free_port(),
        committer_metrics_port=free_port_block(shards), data_dir=str(place.root / f"fs{n}"),
        log_level="WARNING",
    )
    log_dir = place.root / "logs" / f"fs{n}"
    committers = [procs.committer(s, shard, log_dir).start() for shard in range(shards)]
    processes.extend(committers)
    for shard, committer in enumerate(committers):
        await _wait_ready(committer, procs.committer_ready_url(s, shard))
    metrics_urls = []
    for i in range(ingests):
        # Each process serves its own /metrics, on a loopback port of its own.
        own = msgspec.structs.replace(s, ingest_metrics_port=free_port())
        ingest = procs.ingest(own, log_dir, "ingest" if i == 0 else f"ingest-{i + 1}").start()
        processes.append(ingest)
        metrics_urls.append(procs.ingest_metrics_url(own))
        # One at a time: with a shared port, readiness only proves *some* process answers,
        # so each is checked before the next one starts.
        await _wait_ready(ingest, procs.ingest_ready_url(s))
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
        nc = await nats.connect(place.nats.url)
        return cls(name=place.name, root=place.root, postgres=place.postgres, nats=place.nats,
                   port=settings.ingest_port, database_url=settings.database_url, processes=processes,
                   shards=shards, ingests=ingests, settings=settings, nc=nc, js=nc.jetstream(),
                   http=aiohttp.ClientSession(), metrics_urls=metrics_urls)

    def label(self) -> str:
        return f"flashsale/{self.shards}sh" + (f"/{self.ingests}in" if self.ingests > 1 else "")

    async def close(self) -> None:
        await self.nc.close()
        await self.http.close()

    async def seed(self, stock_by_sku: dict[str, int]) -> None:
        await _http_put_all(self.base_url, stock_by_sku,
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

    async def _metric_lines(self) -> list[str]:
        """Every ingest process's /metrics, as lines."""
        lines: list[str] = []
        for url in self.metrics_urls:
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
        totals = dict.fromkeys(_BATCH_SERIES.values(), 0.0)
        for line in await self._metric_lines():
            name, _, value = line.partition(" ")
            if name in _BATCH_SERIES:
                totals[_BATCH_SERIES[name]] += float(value)
        return BatchCounters(**totals)

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
            return await _check(conn, accepted_ids, stock, "skus", "purchases",
                                "s.reserved + s.sold > s.stock", "s.reserved + s.sold", repeat_skus)
        finally:
            await conn.close()

    async def decisions_between(self, start_ms: int, end_ms: int) -> tuple[int, list[float], list[int]]:
        return await _decisions(self.database_url, "purchases", start_ms, end_ms)


async def _check(conn: asyncpg.Connection, accepted_ids: set[str], stock: int, skus: str,
                 orders: str, oversold_cond: str, sold_expr: str, repeat_skus: list[str]) -> Invariants:
    inv = Invariants(accepted_ids=len(accepted_ids), stock=stock)
    counters = await conn.fetchval(f"SELECT count(*) FROM {skus} s WHERE {oversold_cond}")
    by_orders = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT o.sku FROM {orders} o JOIN {skus} s USING (sku)"
        " WHERE o.status IN ('confirmed', 'reserved') GROUP BY o.sku, s.stock"
        " HAVING sum(o.qty) > s.stock) x"
    )
    inv.oversold_skus = counters + by_orders
    # Every logical purchase the bench makes has its own buyer: two rows for one buyer means one
    # click became two orders. Except on the SKUs of repeated-buyer phases, where buyers buy many
    # times on purpose (their ids still come from (buyer, key), so a retry cannot add a row).
    inv.duplicate_orders = await conn.fetchval(
        f"SELECT coalesce(sum(n - 1), 0)::bigint FROM (SELECT count(*) n FROM {orders}"
        " WHERE sku <> ALL($1::text[]) GROUP BY user_id HAVING count(*) > 1) x", repeat_skus
    )
    inv.lost = await conn.fetchval(
        f"SELECT count(*) FROM unnest($1::text[]) a(id) LEFT JOIN {orders} o USING (id)"
        " WHERE o.id IS NULL OR o.status <> ALL($2::text[])",
        list(accepted_ids), FINAL_OR_RESERVED,
    )
    inv.rows = await conn.fetchval(f"SELECT count(*) FROM {orders}")
    inv.sold = await conn.fetchval(f"SELECT coalesce(sum({sold_expr}), 0)::bigint FROM {skus} s")
    return inv


async def _decisions(url: str, orders: str, start_ms: int, end_ms: int) -> tuple[int, list[float], list[int]]:
    conn = await asyncpg.connect(url)
    try:
        decided = await conn.fetchval(
            f"SELECT count(*) FROM {orders} WHERE decided_at_ms >= $1 AND decided_at_ms < $2",
            start_ms, end_ms)
        lat = await conn.fetch(
            f"SELECT decided_at_ms - accepted_at_ms AS d FROM {orders}"
            " WHERE accepted_at_ms >= $1 AND accepted_at_ms < $2", start_ms, end_ms)
        secs = await conn.fetch(
            f"SELECT (decided_at_ms - $1) / 1000 AS s, count(*) AS n FROM {orders}"
            " WHERE decided_at_ms >= $1 AND decided_at_ms < $2 GROUP BY 1 ORDER BY 1", start_ms, end_ms)
        per_s = [0] * max(1, (end_ms - start_ms + 999) // 1000)
        for r in secs:
            if 0 <= r["s"] < len(per_s):
                per_s[r["s"]] += r["n"]
        return decided, [float(r["d"]) for r in lat], per_s
    finally:
        await conn.close()


def cpu_snapshot(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) per process: these processes and their live descendants.

    Key -pid holds what a root has collected from its children that already exited (postgres
    reaps its backends and autovacuum workers), so a process that ends during a phase still
    counts: see cpu_delta.
    """
    out: dict[int, float] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            t = root.cpu_times()
            out[-pid] = t.children_user + t.children_system
            for q in [root, *root.children(recursive=True)]:
                try:
                    t = q.cpu_times()
                    out[q.pid] = t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two snapshots. A process gone by `after` shows up again, whole, in
    its root's reaped-children total, so what it had used before the phase is taken off; a new
    process counts from zero."""
    gone = sum(v for k, v in before.items() if k > 0 and k not in after)
    return sum(v - before.get(k, 0.0) for k, v in after.items()) - gone
