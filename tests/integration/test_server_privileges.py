"""What the database can reveal and what the services may do in it: the embedded servers start
with a scrubbed environment (no secret of the stack's is theirs to hand out), and the services
connect as a role that owns nothing, not as the superuser (launch/postgres_server.py,
committer/schema.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
import pytest

from committer.schema import SERVICE_READS, SERVICE_WRITES, TABLES, apply_schema
from config.settings import REPO_ROOT, Settings
from flashsale.db import split_database_url
from flashsale.ports import free_port, wait_for_port
from flashsale.urls import PG_SERVICE_ROLE, SERVICE_PASSWORD_FILE, password, postgres_url
from launch.nats_server import start_nats
from launch.postgres_server import postgres_ready
from tests.conftest import Servers, System
from tests.integration.test_cli import flashsale
from tests.integration.test_ingest_flow import Client

SECRETS = {
    "FLASHSALE_ID_SECRET": "id-secret-1f0c9a",
    "FLASHSALE_ADMIN_TOKEN": "admin-token-77b2e1",
    "FLASHSALE_JWT_HS256_SECRETS": "jwt-secret-5d3a08-of-at-least-32-bytes",
    "NATS_URL": "nats://flashsale:nats-password-c4e7@127.0.0.1:1",
    "FLASHSALE_PSP_API_KEY": "sk_live_psp_key_9e21",
}


def environ_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def assert_no_secret(environ: bytes) -> None:
    for name, value in SECRETS.items():
        assert value.encode() not in environ, name
    assert b"FLASHSALE_" not in environ and b"DATABASE_URL" not in environ


def service_url(servers: Servers, settings: Settings) -> str:
    database, _ = split_database_url(settings.database_url)
    return postgres_url(servers.postgres.port, database, user=PG_SERVICE_ROLE,
                        password=password(servers.root / "pg", SERVICE_PASSWORD_FILE))


@pytest.fixture
def data_dir():
    """Not under pytest's tmp_path (mode 0700, reset by any pytest session starting meanwhile),
    which the unprivileged postgres user (when we are root) could not enter."""
    root = Path(tempfile.mkdtemp(prefix="flashsale-privileges-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_servers_started_by_make_run_hold_no_secret_of_the_stack(data_dir: Path):
    """`flashsale dev` hands its whole environment to the programs it supervises; the servers
    among them drop it when they become nats-server and the postmaster. The superuser's
    pg_read_binary_file('/proc/<postmaster>/environ') then reads nothing secret."""
    env = {**os.environ, **SECRETS}
    nats_port, monitor_port, pg_port = free_port(), free_port(), free_port()
    me = [sys.executable, "-m", "launch"]
    nats = subprocess.Popen([*me, "embedded-nats", "--data-dir", str(data_dir / "nats"), "--port",
                             str(nats_port), "--monitor-port", str(monitor_port)], env=env, cwd=REPO_ROOT)
    pg = subprocess.Popen([*me, "embedded-postgres", "--data-dir", str(data_dir / "pg"), "--port",
                           str(pg_port)], env=env, cwd=REPO_ROOT)
    try:
        wait_for_port(nats_port, 30, nats)
        wait_for_port(pg_port, 120, pg)
        while not postgres_ready(pg_port):
            time.sleep(0.1)
        assert_no_secret(environ_of(nats.pid))  # exec'd in place: the same pid
        assert_no_secret(environ_of(pg.pid))

        async def read_as_superuser() -> bytes:
            conn = await asyncpg.connect(postgres_url(pg_port, "postgres", password(data_dir / "pg")))
            try:
                data: bytes = await conn.fetchval("SELECT pg_read_binary_file($1)",
                                                  f"/proc/{pg.pid}/environ")
                return data
            finally:
                await conn.close()

        assert_no_secret(asyncio.run(read_as_superuser()))
    finally:
        pg.send_signal(signal.SIGINT)
        nats.send_signal(signal.SIGTERM)
        pg.wait(30)
        nats.wait(30)


def test_servers_started_for_tests_hold_no_secret_either(tmp_path: Path, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    server = start_nats(tmp_path / "nats")
    try:
        assert_no_secret(environ_of(server.proc.pid))
    finally:
        server.stop()


async def test_the_service_role_owns_nothing(servers: Servers, settings: Settings, db):
    assert sorted(SERVICE_WRITES + SERVICE_READS) == sorted(TABLES)  # every table granted
    await apply_schema(settings.database_url, settings.shards, PG_SERVICE_ROLE)
    await db.execute("CREATE TABLE operators_only (secret text)")
    conn = await asyncpg.connect(service_url(servers, settings))
    try:
        # What it needs: read and write the committer's tables, read the shard map.
        await conn.execute("INSERT INTO skus (sku, stock, updated_at_ms) VALUES ('s', 1, 0)")
        await conn.execute("UPDATE skus SET stock = 2 WHERE sku = 's'")
        assert await conn.fetchval("SELECT shards FROM shard_map") == settings.shards
        denied = [
            "SELECT pg_read_binary_file('/proc/1/environ')",
            "SELECT pg_read_file('postgresql.conf')",
            "SELECT pg_ls_dir('.')",
            "COPY skus TO PROGRAM 'true'",
            "SELECT rolpassword FROM pg_authid",
            "SELECT * FROM operators_only",
            "ALTER TABLE skus ADD COLUMN extra int",
            "CREATE INDEX skus_extra ON skus (stock)",
            "DROP TABLE purchases",
            "CREATE TABLE mine (x int)",
            "UPDATE shard_map SET shards = 1",
            "DELETE FROM purchases",
            "TRUNCATE skus",
            "SET ROLE postgres",
            "CREATE ROLE another LOGIN",
        ]
        for sql in denied:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
    finally:
        await conn.close()


async def test_the_stack_runs_as_the_service_role(servers: Servers, settings: Settings, db, tmp_path):
    """`flashsale schema` as the superuser grants the service role its tables; committers, ingest
    and the CLI then do everything as the service role."""
    as_service = msgspec.structs.replace(settings, database_url=service_url(servers, settings),
                                         database_admin_url=settings.database_url)
    out = flashsale(as_service, "schema")
    assert out.returncode == 0, out.stderr
    system = System(as_service, tmp_path / "logs")
    try:
        system.start()
        out = flashsale(as_service, "set-sku", "hot", "--stock", "2", "--price-cents", "100")
        assert out.returncode == 0, out.stderr
        async with aiohttp.ClientSession() as http:
            buyer = Client(http, system.base_url, settings.admin_token)
            status, _, body = await buyer.buy("hot", "alice", "k1")
        assert status == 200 and body["status"] == "confirmed", body
        database, _ = split_database_url(settings.database_url)
        roles = await db.fetch(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database)
        assert {r["usename"] for r in roles} == {PG_SERVICE_ROLE}
    finally:
        system.stop()
