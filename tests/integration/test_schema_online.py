"""`flashsale schema` beside the running stack: a schema change during a flood of purchases, with
both committers writing, neither deadlocks nor disturbs a writer (committer/schema.py)."""

from __future__ import annotations

import asyncio
import re

import asyncpg

from committer import store
from committer.schema import TABLES, apply_schema, schema_sql
from proto.sharding import shard_of
from tests.flood import check_invariants, plan, post_all
from tests.integration.test_flood import create_sku

STOCK = 400


def test_a_schema_change_locks_every_table_of_the_schema():
    created = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", schema_sql())
    assert sorted(created) == sorted(TABLES)


async def test_a_schema_change_waits_for_a_writers_batch_instead_of_deadlocking(settings, db):
    """The shape of a committer's batch: lease renewal first, then purchases. A schema change that
    starts between the two must not hold `purchases` while it waits for `shard_leases` (that
    cycle was a DeadlockDetectedError for one side): the batch commits, then the schema applies."""
    epoch, _ = await store.acquire_lease(db, 0, "writer", 60_000)
    assert epoch is not None
    await db.execute("DELETE FROM schema_applied")  # as if the schema had changed
    async with db.transaction():
        await store.renew_lease(db, 0, epoch, 60_000)
        schema = asyncio.create_task(apply_schema(settings.database_url, settings.shards))
        await asyncio.sleep(0.3)  # the schema change is waiting on a lock by now
        await db.execute(
            """INSERT INTO purchases (id, sku, user_id, qty, status, amount_cents, request_hash,
                                      accepted_at_ms, decided_at_ms, updated_at_ms)
               VALUES ('p', 's', 'u', 1, 'rejected', 0, 'h', 0, 0, 0)""")
    await asyncio.wait_for(schema, 30)
    assert await db.fetchval("SELECT count(*) FROM purchases") == 1
    assert await db.fetchval("SELECT count(*) FROM schema_applied") == 1


async def test_schema_changes_during_a_flood_with_committers_writing(system, settings, db):
    system.start()
    skus = [next(f"hot{i}" for i in range(100) if shard_of(f"hot{i}", 2) == shard) for shard in (0, 1)]
    for sku in skus:
        await create_sku(system.base_url, settings.admin_token, sku, stock=STOCK, max_per_user=1)
    epochs = dict(await db.fetch("SELECT shard, epoch FROM shard_leases"))
    attempts = {sku: plan(sku, requests=1500, users=1200, seed=n) for n, sku in enumerate(skus)}
    for sku, planned in attempts.items():
        for a in planned:  # a buyer's key is one purchase: no key on both SKUs
            a.key = f"{sku}-{a.key}"
    flood = asyncio.gather(*(post_all(system.base_url, a, concurrency=150, wait_s=2)
                             for a in attempts.values()))
    applied = 0
    while not flood.done():
        # As if the schema had changed: every application runs the whole DDL under its locks.
        await db.execute("DELETE FROM schema_applied")
        await apply_schema(settings.database_url, settings.shards)
        applied += 1
    results = await flood
    assert applied >= 3, f"only {applied} schema changes ran during the flood"
    for sku, result in zip(skus, results, strict=True):
        summary = await check_invariants(db, result, sku, STOCK, max_per_user=1)
        assert summary["confirmed"] == STOCK
    # No writer failed, rebuilt or lost its shard meanwhile.
    assert dict(await db.fetch("SELECT shard, epoch FROM shard_leases")) == epochs
    for shard in (0, 1):
        log = system.processes[f"committer-{shard}"].log_tail(400)
        assert "rebuilding" not in log and "lost" not in log and "Deadlock" not in log, log


async def test_an_unchanged_schema_takes_no_table_lock(system, settings, db):
    """A start (or `flashsale schema`) beside the stack with nothing to change: it goes through
    even while a transaction holds every table exclusively."""
    blocker = await asyncpg.connect(settings.database_url)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE shard_leases, skus, purchases IN ACCESS EXCLUSIVE MODE")
            stored = await asyncio.wait_for(apply_schema(settings.database_url, settings.shards), 10)
            assert stored.shards == settings.shards
    finally:
        await blocker.close()
