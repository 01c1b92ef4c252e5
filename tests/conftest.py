"""Shared fixtures: one real nats-server (JetStream) and one real PostgreSQL per test session,
on free ports in a temp dir. Each test gets its own database and NATS namespace, so tests never
see each other's data, and spawns the flashsale processes it needs as real OS processes."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from committer.schema import apply_schema
from config.settings import Settings, load
from flashsale.db import ensure_database
from flashsale.ports import free_port, free_port_block
from gateway.fakepsp.client import FakePspAdmin
from launch import processes as procs
from launch.embedded import Embedded
from launch.nats_server import start_nats
from launch.postgres_server import start_postgres
from launch.processes import fakepsp_process
from tests.auth import AUTH_SETTINGS
from tests.chaos import TIMEOUT_S as CHAOS_TIMEOUT_S

_counter = itertools.count(1)
CHAOS_DIR = Path(__file__).parent / "chaos"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fault scenarios get the chaos bound, unless a test sets its own `timeout` mark."""
    for item in items:
        if item.path.is_relative_to(CHAOS_DIR) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(CHAOS_TIMEOUT_S))


@dataclass
class Servers:
    nats: Embedded
    postgres: Embedded
    root: Path


@pytest.fixture(scope="session")
def servers():
    root = Path(tempfile.mkdtemp(prefix="flashsale-test-"))
    nats_server = start_nats(root / "nats")
    postgres = start_postgres(root / "pg")
    yield Servers(nats_server, postgres, root)
    nats_server.stop()
    postgres.stop()


@pytest.fixture
def settings(servers: Servers, tmp_path: Path) -> Settings:
    n = next(_counter)
    base = servers.postgres.url.rpartition("/")[0]
    s = load(
        env={},
        file=None,
        nats_url=servers.nats.url,
        database_url=f"{base}/t{n}",
        namespace=f"t{n}",
        shards=2,
        ingest_port=free_port(),
        ingest_metrics_port=free_port(),  # a second ingest of a test needs one of its own
        committer_metrics_port=free_port_block(4),
        data_dir=str(tmp_path / "data"),
        log_level="INFO",
        **AUTH_SETTINGS,
        client_rate_per_s=0,  # tests send from one address; the per-IP rate has its own test
        # JetStream reserves a stream's max_bytes from the server's storage: many tests share
        # one server, so each namespace gets small intents streams.
        intents_max_bytes=16 << 20,
    )
    asyncio.run(_prepare_db(s.database_url, s.shards))
    return s


async def _prepare_db(url: str, shards: int) -> None:
    await ensure_database(url)
    await apply_schema(url, shards)


@pytest.fixture
async def db(settings: Settings):
    conn = await asyncpg.connect(settings.database_url)
    yield conn
    await conn.close()


@dataclass
class System:
    """The flashsale processes of one test. Stopped (and their logs kept) at teardown."""

    settings: Settings
    log_dir: Path
    processes: dict[str, procs.Process] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.ingest_host}:{self.settings.ingest_port}"

    def start_committer(
        self, shard: int, name: str | None = None, wait: bool = True, status_port: int | None = None
    ) -> procs.Process:
        """A second committer for a running shard needs its own `status_port`."""
        p = procs.committer(self.settings, shard, self.log_dir, name, status_port).start()
        self.processes[p.name] = p
        if wait:
            p.wait_http_ok(procs.committer_ready_url(self.settings, shard, status_port))
        return p

    def start_ingest(self, settings: Settings | None = None, name: str = "ingest") -> procs.Process:
        s = settings or self.settings
        p = procs.ingest(s, self.log_dir, name).start()
        self.processes[name] = p
        p.wait_http_ok(procs.ingest_ready_url(s))
        return p

    def start(self, ingest: bool = True) -> System:
        for shard in range(self.settings.shards):
            self.start_committer(shard)
        if ingest:
            self.start_ingest()
        return self

    def stop(self) -> None:
        for p in self.processes.values():
            p.stop()


def running(settings: Settings, log_dir: Path) -> Iterator[System]:
    """A System for one test: stopped afterwards, its processes' log tails printed."""
    sys_ = System(settings, log_dir)
    yield sys_
    sys_.stop()
    for p in sys_.processes.values():
        print(f"--- {p.name} log tail ---\n{p.log_tail(20)}")


@pytest.fixture
def system(settings: Settings, tmp_path: Path) -> Iterator[System]:
    yield from running(settings, tmp_path / "logs")


async def seed_sku(settings: Settings, sku: str, stock: int, **fields) -> None:
    """A SKU row as a committer would have written it, for tests that run ingest without
    committers (purchases then stay pending)."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(
            """INSERT INTO skus (sku, stock, price_cents, max_per_user, payment, updated_at_ms)
               VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (sku) DO NOTHING""",
            sku, stock, fields.get("price_cents", 0), fields.get("max_per_user"),
            fields.get("payment", "none"),
        )
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory):
    """A fake PSP process per test module: (base URL, its admin client, default settings)."""
    base = load(env={}, file=None)
    proc, url = fakepsp_process(base, tmp_path_factory.mktemp("psp"), seed=7)
    proc.start()
    proc.wait_http_ok(url + "/healthz")
    yield url, FakePspAdmin(url, base.psp_api_key), base
    proc.stop()
