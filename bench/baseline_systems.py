"""The baselines as systems under test: echo, naive and rowlock (`python -m bench.baselines.<name>`)
and the Redis seckill (redis-server, its HTTP app and its Postgres worker)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiohttp
import asyncpg

from bench.baselines.app import SCHEMA
from bench.baselines.seckill import Seckill
from bench.buyers import bench_settings
from bench.invariants import Invariants, check_invariants, db_decisions
from bench.systems import Place, System, new_database, run_numbers, wait_ready
from config.settings import to_env
from flashsale.ports import free_port, wait_for_port
from launch import processes as procs


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
            database_url = await new_database(place.postgres, f"bench_{name}_{next(run_numbers)}")
            args += ["--database-url", database_url]
        log_dir = place.root / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        p = procs.Process(name, [sys.executable, "-m", f"bench.baselines.{name}", *args],
                          _baseline_env(), log_dir / f"{name}.log").start()
        processes.append(p)
        await wait_ready(p, f"http://127.0.0.1:{port}/readyz")
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
            return await check_invariants(conn, accepted_ids, stock, "bench_skus", "bench_orders",
                                "s.sold > s.stock", "s.sold", repeat_skus)
        finally:
            await conn.close()

    async def decisions_between(self, start_ms: int, end_ms: int) -> tuple[int, list[float], list[int]]:
        if self.name == "echo":
            return 0, [], []
        return await db_decisions(self.database_url, "bench_orders", start_ms, end_ms)

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
        n = next(run_numbers)
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
        database_url = await new_database(place.postgres, f"bench_redis_{n}")
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
        await wait_ready(app, f"http://127.0.0.1:{port}/readyz")
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
