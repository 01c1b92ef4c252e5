"""The internal services take no anonymous clients: the embedded NATS and
Postgres ask for the credentials generated into their data directories (0600 files, the same on
every run), a data directory without credentials is given them, and ingest's /metrics is not on
the public port but on its own port on loopback."""

from __future__ import annotations

import asyncio
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
import nats
import nats.errors
import pytest

from config.settings import REPO_ROOT, Settings
from flashsale.jetstream import connect_nats, ensure_streams
from flashsale.urls import NATS_USER, PASSWORD_FILE, nats_url, password, postgres_url, without_password
from launch import processes as procs
from launch.embedded import Embedded
from launch.nats_server import start_nats
from launch.postgres_server import start_postgres
from tests.conftest import Servers


async def _quiet(exc: Exception) -> None:
    """nats-py's default error callback logs a traceback for each refused attempt."""


async def nats_refuses(url: str) -> str:
    with pytest.raises(nats.errors.Error) as refused:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0,
                                connect_timeout=5, error_cb=_quiet)
        await nc.close()
    return str(refused.value)


async def postgres_refuses(url: str) -> str:
    with pytest.raises(asyncpg.InvalidPasswordError) as refused:
        conn = await asyncpg.connect(url)
        await conn.close()
    return str(refused.value)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_nats_refuses_anonymous_and_wrong_credentials(servers: Servers, settings: Settings):
    port = servers.nats.port
    nc = await connect_nats(settings, "auth-test")
    try:
        await ensure_streams(nc.jetstream(), settings)
        # The stream list comes in pages of 256 names, fewer than the session's namespaces hold:
        # ask for the stream itself.
        info = await nc.jetstream().stream_info(settings.names.intents_stream(0))
        assert info.config.name == settings.names.intents_stream(0)  # with the generated credentials
    finally:
        await nc.close()
    anonymous = await nats_refuses(nats_url(port))
    wrong = await nats_refuses(nats_url(port, "not-the-password"))
    print(f"anonymous: {anonymous}; wrong password: {wrong}")
    assert "Authorization Violation" in anonymous and "Authorization Violation" in wrong
    # NATS_URL as a list of servers carries the credentials of each.
    listed = msgspec.structs.replace(settings, nats_url=f"{servers.nats.url}, {servers.nats.url}")
    nc = await connect_nats(listed, "auth-list")
    await nc.close()


async def test_postgres_refuses_no_password_and_a_wrong_one(servers: Servers, settings: Settings):
    port = servers.postgres.port
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await conn.fetchval("SELECT current_user") == "postgres"
        method = await conn.fetchval(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
        assert method.startswith("SCRAM-SHA-256$")  # a verifier, not the password
    finally:
        await conn.close()
    none = await postgres_refuses(postgres_url(port, "postgres"))
    wrong = await postgres_refuses(postgres_url(port, "postgres", "not-the-password"))
    # The unix socket in the data directory asks too.
    socket_dir = servers.root / "pg"
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host=str(socket_dir), port=port, user="postgres", database="postgres")
    print(f"no password: {none}; wrong one: {wrong}")


def test_credentials_are_owner_only_files_in_the_data_directories(servers: Servers):
    nats_dir, pg_dir = servers.root / "nats", servers.root / "pg"
    for secret in (nats_dir / PASSWORD_FILE, nats_dir / "nats.conf", pg_dir / PASSWORD_FILE):
        assert mode(secret) == 0o600, (secret, oct(mode(secret)))
    assert servers.nats.url == nats_url(servers.nats.port, password(nats_dir))
    assert servers.nats.url.startswith(f"nats://{NATS_USER}:")
    assert servers.postgres.url == postgres_url(servers.postgres.port, password=password(pg_dir))
    assert password(nats_dir) != password(pg_dir)
    assert len(password(nats_dir)) >= 32
    assert without_password(servers.postgres.url) == (
        f"postgresql://postgres:***@127.0.0.1:{servers.postgres.port}/flashsale")


async def _connects(server: Embedded) -> None:
    nc = await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0)
    await nc.close()


def test_nats_credentials_are_reused_by_a_restart(tmp_path: Path):
    first = start_nats(tmp_path / "nats")
    first.stop()
    again = start_nats(tmp_path / "nats", port=first.port)
    try:
        assert again.url == first.url
        asyncio.run(_connects(again))
    finally:
        again.stop()


@pytest.fixture
def pg_dir():
    """Not under pytest's tmp_path (mode 0700), which the unprivileged postgres user (when we are
    root) could not enter."""
    root = Path(tempfile.mkdtemp(prefix="flashsale-pgauth-"))
    yield root / "pg"
    shutil.rmtree(root, ignore_errors=True)


async def _write(url: str) -> None:
    conn = await asyncpg.connect(url.rpartition("/")[0] + "/postgres")
    try:
        await conn.execute("CREATE TABLE kept (id int)")
        await conn.execute("INSERT INTO kept VALUES (7)")
    finally:
        await conn.close()


async def _read(url: str) -> list[int]:
    conn = await asyncpg.connect(url.rpartition("/")[0] + "/postgres")
    try:
        return [r["id"] for r in await conn.fetch("SELECT id FROM kept")]
    finally:
        await conn.close()


def test_a_data_directory_that_trusts_clients_is_made_to_ask(pg_dir: Path):
    """A data/postgres with trust in pg_hba.conf and no password file. The next start
    gives postgres a generated password and requires it; the data is kept."""
    pg = start_postgres(pg_dir)
    asyncio.run(_write(pg.url))
    pg.stop()
    hba = pg_dir / "pgdata" / "pg_hba.conf"
    hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    old_password = password(pg_dir)
    (pg_dir / PASSWORD_FILE).unlink()

    migrated = start_postgres(pg_dir, port=pg.port)
    try:
        new_password = password(pg_dir)
        assert new_password != old_password
        assert migrated.url == postgres_url(pg.port, password=new_password)
        assert asyncio.run(_read(migrated.url)) == [7]
        asyncio.run(postgres_refuses(postgres_url(pg.port, "postgres")))
        asyncio.run(postgres_refuses(postgres_url(pg.port, "postgres", old_password)))
        assert "trust" not in hba.read_text() and "scram-sha-256" in hba.read_text()
        assert mode(pg_dir / PASSWORD_FILE) == 0o600
    finally:
        migrated.stop()


async def test_metrics_are_on_their_own_loopback_port_only(system, settings: Settings):
    system.start_ingest()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{system.base_url}/metrics") as r:
            assert r.status == 404  # exactly like any unknown path
            assert r.headers["Content-Type"].startswith("application/problem+json")
        async with http.get(procs.ingest_metrics_url(settings)) as r:
            assert r.status == 200
            assert "flashsale_ingest_requests_total" in await r.text()
        # And this process's own readiness, which the shared public port cannot tell.
        async with http.get(f"http://127.0.0.1:{settings.ingest_metrics_port}/readyz") as r:
            assert r.status == 200 and await r.json() == {"status": "ready"}
    # Bound to 127.0.0.1 only: another loopback address (another host, as it were) gets nothing.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.2", settings.ingest_metrics_port)


def test_a_second_ingest_on_a_taken_metrics_port_says_so_and_exits(system, settings: Settings):
    system.start_ingest()
    other = msgspec.structs.replace(settings, ingest_port=procs.free_port())
    second = procs.ingest(other, system.log_dir, "ingest-2")
    out = subprocess.run(second.argv, env=second.env, capture_output=True, text=True, timeout=30,
                         cwd=REPO_ROOT)
    print(out.stderr[-1500:])
    assert out.returncode == 2
    assert "each ingest process needs its own ingest_metrics_port" in out.stderr
