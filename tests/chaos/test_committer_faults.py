"""Postgres failures other than a clean connection error: the committer rebuilds from Postgres and
carries on, logs one line per change of its dependency, and its /readyz
follows a dead connection even while idle."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import msgspec
import pytest

from launch.processes import committer_ready_url
from proto.sharding import shard_of
from tests.chaos import scaled
from tests.chaos.test_committer_kill import wait_rows
from tests.chaos.test_standby import log_lines
from tests.flood import check_invariants, plan, post_all
from tests.history import check_history
from tests.hostile import Hostile
from tests.integration.test_flood import create_sku
from tests.util import eventually

pytestmark = pytest.mark.chaos

STOCK = 500
TERMINATE_COMMITTERS = """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                          WHERE datname = current_database() AND application_name LIKE 'committer-%'"""


async def test_backends_terminated_mid_flood(system, settings, db):
    system.start()
    await create_sku(system.base_url, settings.admin_token, "hot", stock=STOCK, price_cents=999,
                     max_per_user=1)
    committer = system.processes[f"committer-{shard_of('hot', settings.shards)}"]
    attempts = plan("hot", requests=scaled(5000), users=scaled(3000), seed=17)
    flood = asyncio.create_task(post_all(system.base_url, attempts, concurrency=300,
                                         hostile=Hostile(settings)))
    terminated = 0
    for at_least in (100, 250, 400):
        await wait_rows(db, at_least, flood)
        terminated += await db.fetchval(TERMINATE_COMMITTERS)
        await asyncio.sleep(0.2)
    result = await flood
    summary = await check_invariants(db, result, "hot", STOCK, max_per_user=1)
    assert summary["confirmed"] == STOCK
    history = await check_history(db, settings, result.accepted())
    print("backends terminated:", terminated, "history:", history)
    assert all(p.alive for p in system.processes.values())
    lost, back = log_lines(committer, "postgres lost"), log_lines(committer, "postgres back")
    assert lost and len(back) == len(lost), committer.log_tail()


async def test_internal_client_error_after_commit(system, settings, db):
    """asyncpg.InternalClientError out of a batch COMMIT (seen when the postmaster was killed):
    the batch may or may not be committed. Injected after every 7th commit."""
    system.settings = msgspec.structs.replace(settings, fail_after_commit=7)
    system.start()
    await create_sku(system.base_url, settings.admin_token, "hot", stock=STOCK, max_per_user=1)
    committer = system.processes[f"committer-{shard_of('hot', settings.shards)}"]
    attempts = plan("hot", requests=scaled(3000), users=scaled(2000), seed=19)
    result = await post_all(system.base_url, attempts, concurrency=200, wait_s=5,
                            hostile=Hostile(settings))
    summary = await check_invariants(db, result, "hot", STOCK, max_per_user=1)
    assert summary["confirmed"] == STOCK
    print("history:", await check_history(db, settings, result.accepted()))
    assert committer.alive
    failures = log_lines(committer, "postgres lost")
    print("injected failures survived:", len(failures))
    assert failures and "InternalClientError" in str(failures[0]["error"])


async def test_readyz_follows_a_dead_postgres_while_idle(system, settings, db):
    system.start(ingest=False)
    committer = system.processes["committer-0"]
    url = committer_ready_url(settings, 0)
    base, _, name = settings.database_url.rpartition("/")

    async with aiohttp.ClientSession() as http:

        async def ready_status() -> int:
            async with http.get(url) as r:
                return r.status

        assert await ready_status() == 200
        # Postgres stops taking the committers: their connections die, reconnects are refused
        # (the ALTER runs from another database: Postgres refuses it on the current one).
        admin = await asyncpg.connect(base + "/postgres")
        try:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            try:
                await db.fetchval(TERMINATE_COMMITTERS)
                await eventually(lambda: _is(ready_status, 503), timeout_s=10)
                await asyncio.sleep(3 * settings.lease_ttl_s)  # several failed reconnects
                assert await ready_status() == 503
            finally:
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        finally:
            await admin.close()
        await eventually(lambda: _is(ready_status, 200), timeout_s=30)
    assert committer.alive
    # One line when it was lost, one when it came back: not one per retry.
    assert len(log_lines(committer, "postgres lost")) == 1, committer.log_tail()
    assert len(log_lines(committer, "postgres back")) == 1, committer.log_tail()


async def _is(status, expected: int) -> bool:
    try:
        return bool(await status() == expected)
    except aiohttp.ClientError:
        return False


async def test_postgres_read_only_for_a_while(system, settings, db):
    """The database refuses writes for a few seconds mid-flood (a failover in progress, a full
    disk turned read-only): buyers keep getting 202s, the writer retries without deciding
    anything twice, and once writes come back every accepted purchase is decided."""
    system.start()
    await create_sku(system.base_url, settings.admin_token, "hot", stock=STOCK, max_per_user=1)
    attempts = plan("hot", requests=scaled(3000), users=scaled(2000), seed=23)
    flood = asyncio.create_task(post_all(system.base_url, attempts, concurrency=200,
                                         hostile=Hostile(settings)))
    await wait_rows(db, 100, flood)
    name = await db.fetchval("SELECT current_database()")
    await db.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    await db.fetchval(TERMINATE_COMMITTERS)  # their next sessions are read-only
    read_only_at = asyncio.get_running_loop().time()
    await asyncio.sleep(0.5)  # batches committed before the sessions went read-only are in
    frozen = await db.fetchval("SELECT count(*) FROM purchases")
    await asyncio.sleep(2.5)
    assert await db.fetchval("SELECT count(*) FROM purchases") == frozen  # nothing written
    await db.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    await db.fetchval(TERMINATE_COMMITTERS)
    writable_at = asyncio.get_running_loop().time()

    async def deciding_again() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM purchases") > frozen)

    await eventually(deciding_again, timeout_s=30)
    print(f"read-only for {writable_at - read_only_at:.1f} s; decisions resumed "
          f"{asyncio.get_running_loop().time() - writable_at:.2f} s after writes came back")
    result = await flood
    summary = await check_invariants(db, result, "hot", STOCK, max_per_user=1)
    assert summary["confirmed"] == STOCK
    await check_history(db, settings, result.accepted())
    assert all(p.alive for p in system.processes.values())
    # One line when writes stopped being accepted, one when they came back, not one per retry.
    committer = system.processes[f"committer-{shard_of('hot', settings.shards)}"]
    lost, back = log_lines(committer, "postgres lost"), log_lines(committer, "postgres back")
    assert len(lost) == len(back) == 1, (lost, back)
