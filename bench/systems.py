"""The systems under test, started as real processes against one embedded NATS + PostgreSQL:
what every system is (`System`), where it runs (`Place`) and the steps all launches share.
The systems themselves: bench.baseline_systems (echo, naive, rowlock, redis) and
bench.flashsale_system.

Each `System` owns a fresh database (and, for flashsale, a fresh NATS namespace) so runs never
see each other's rows; all share the same servers and so the same durable settings.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

from bench.invariants import Invariants
from flashsale.db import ensure_database
from launch import processes as procs
from launch.cluster import Cluster
from launch.embedded import Embedded

run_numbers = itertools.count(1)


@dataclass(frozen=True)
class NatsServers:
    """The NATS flashsale runs on: the embedded single node (streams R1, fsynced before each
    ack) or a local cluster of `nodes` (streams R3: an ack means a quorum stored it)."""

    url: str  # every node, comma-separated
    pids: list[int]
    nodes: int

    @classmethod
    def single(cls, server: Embedded) -> NatsServers:
        return cls(server.url, [server.proc.pid], 1)

    @classmethod
    def of_cluster(cls, cluster: Cluster) -> NatsServers:
        return cls(cluster.url, [n.server.proc.pid for n in cluster.nodes], len(cluster.nodes))

    @property
    def servers(self) -> list[str]:
        return self.url.split(",")

    @property
    def replicas(self) -> int:
        return min(self.nodes, 3)


@dataclass(frozen=True)
class BatchCounters:
    """flashsale's monotonic batch counters: ingest's intent batches (one JetStream message
    each), summed over ingest processes, and the committers' decided batches, summed over shards."""

    batches: float
    intents: float
    store_s: float
    commits: float = 0.0  # committer batches decided and committed
    committed_intents: float = 0.0  # intents in them


@dataclass(frozen=True)
class Place:
    """Where a system under test runs: its name, scratch directory and the shared servers."""

    name: str
    root: Path
    postgres: Embedded
    nats: NatsServers


@dataclass(kw_only=True)
class System:
    """Base: one running system under test, built by a subclass's async `launch(...)`, which
    appends every process it starts to the caller's list (so the caller stops them even when
    the launch fails half way). Subclasses know their tables."""

    name: str
    root: Path
    postgres: Embedded
    nats: NatsServers
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
        groups["nats-server"] = list(self.nats.pids)
        return groups

    def syncing_pids(self) -> dict[str, list[int]]:
        """The processes that fsync (for strace): every postgres process, nats-server, and
        whatever else the system adds (redis-server)."""
        pg = [self.postgres.proc.pid]
        try:
            pg += [c.pid for c in psutil.Process(pg[0]).children(recursive=True)]
        except psutil.Error:
            pass
        return {"postgres": pg, "nats-server": list(self.nats.pids)}

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


async def new_database(postgres: Embedded, name: str) -> str:
    url = postgres.url.rpartition("/")[0] + "/" + name
    await ensure_database(url)
    return url


async def put_skus(base_url: str, stock_by_sku: dict[str, int], headers: dict[str, str],
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


async def wait_ready(p: procs.Process, url: str, timeout_s: float = 60.0) -> None:
    await asyncio.to_thread(p.wait_http_ok, url, timeout_s)
