"""kill -9 of the hot shard's committer while a flood runs, then a restart: nothing oversold,
nothing decided twice, nothing accepted lost."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from proto.sharding import shard_of
from tests.chaos import scaled
from tests.flood import check_invariants, plan, post_all
from tests.hostile import Hostile
from tests.integration.test_flood import create_sku

pytestmark = pytest.mark.chaos

STOCK = 500


async def wait_rows(db, at_least: int, flood: asyncio.Task, timeout_s: float = 30) -> None:
    """Until `at_least` decisions are committed, or the flood is over (how many clicks become
    purchases depends on when ingest learns of the sell-out and answers 409 instead)."""
    for _ in range(int(timeout_s / 0.02)):
        if flood.done() or await db.fetchval("SELECT count(*) FROM purchases") >= at_least:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {at_least} decisions after {timeout_s}s")


async def test_kill_9_committer_mid_flood(system, settings, db):
    system.start()
    await create_sku(system.base_url, settings.admin_token, "hot", stock=STOCK, price_cents=999,
                     max_per_user=1)
    shard = shard_of("hot", settings.shards)
    attempts = plan("hot", requests=scaled(5000), users=scaled(3000), seed=11)
    flood = asyncio.create_task(post_all(system.base_url, attempts, concurrency=300,
                                         hostile=Hostile(settings)))
    # Two kills: one early (mid-sale, stock left) and one around the sell-out.
    for at_least in (300, STOCK):
        await wait_rows(db, at_least, flood)
        name = f"committer-{shard}"
        system.processes[name].kill9()
        epoch_before = await db.fetchval("SELECT epoch FROM shard_leases WHERE shard = $1", shard)
        await asyncio.sleep(0.5)  # buyers keep clicking into JetStream meanwhile
        system.start_committer(shard, name=name)
        assert await db.fetchval("SELECT epoch FROM shard_leases WHERE shard = $1", shard) == epoch_before + 1
    result = await flood
    summary = await check_invariants(db, result, "hot", STOCK, max_per_user=1)
    assert summary["confirmed"] == STOCK


async def test_death_between_commit_and_ack(system, settings, db):
    """Committed but never acked or announced: the batch comes back to the restarted committer,
    which must recognise every id and announce the same decisions, not decide them again."""
    import msgspec

    system.start()
    await create_sku(system.base_url, settings.admin_token, "hot", stock=50, max_per_user=1)
    hostile = Hostile(settings)  # its SKUs before the writer that dies after its first commit
    async with aiohttp.ClientSession() as http:
        await hostile.setup(http, system.base_url)
    shard = shard_of("hot", settings.shards)
    name = f"committer-{shard}"
    system.processes[name].stop()
    doomed = msgspec.structs.replace(settings, crash_after_commit=1)
    system.settings = doomed
    crashing = system.start_committer(shard, name=name)
    attempts = plan("hot", requests=scaled(400), users=scaled(300), seed=5)
    # The buyers wait for their outcome: each must get the committed one.
    flood = asyncio.create_task(post_all(system.base_url, attempts, concurrency=100, wait_s=10,
                                         hostile=hostile))
    for _ in range(500):
        if not crashing.alive:
            break
        await asyncio.sleep(0.02)
    assert crashing.proc.returncode == 137
    committed_before = await db.fetchval("SELECT count(*) FROM purchases")
    assert committed_before > 0
    system.settings = settings
    system.start_committer(shard, name=name)
    result = await flood
    summary = await check_invariants(db, result, "hot", 50, max_per_user=1)
    assert summary["confirmed"] == 50
