"""A drop's writer killed in the draw window, and again at the worst moment of the draw (its
batch committed, nothing acked or announced): the restarted writer holds the same entries and
the outcome is exactly the pure function of the committed seed and the accepted purchases."""

from __future__ import annotations

import asyncio

import aiohttp
import msgspec
import pytest

from flashsale.verify import verify_draw
from proto.clock import now_ms
from proto.sharding import shard_of
from tests.integration.test_draw import check_outcome, enter, open_drop, until, wait_decided

pytestmark = pytest.mark.chaos

STOCK = 10


async def test_writer_killed_mid_window_and_mid_draw(system, settings, db):
    system.start()
    base = system.base_url
    drop = await open_drop(base, settings.admin_token, "drop-chaos", stock=STOCK, window_s=3,
                           max_per_user=1)
    shard = shard_of(drop.sku, settings.shards)
    name = f"committer-{shard}"
    async with aiohttp.ClientSession() as http:
        await until(drop.start_ms + 20)
        await enter(http, base, drop, [f"a-{i}" for i in range(25)])
        system.processes[name].kill9()  # mid-window: some entries committed, some taken, unacked
        killed_at = now_ms()
        await enter(http, base, drop, [f"b-{i}" for i in range(25)])  # into the stream meanwhile
    assert now_ms() < drop.start_ms + 3000, "the test machine is too slow for this window"
    # Back only after the draw is due and the dead writer's batch is due for redelivery; this
    # writer dies right after its first commit, before acking or announcing anything.
    await until(max(drop.decides_at_ms, killed_at + int(settings.ack_wait_s * 1000)) + 300)
    system.processes[name].stop()
    system.settings = msgspec.structs.replace(settings, crash_after_commit=1)
    crashing = system.start_committer(shard, name=name)
    for _ in range(1500):
        if not crashing.alive:
            break
        await asyncio.sleep(0.02)
    assert crashing.proc is not None and crashing.proc.returncode == 137
    system.settings = settings
    system.start_committer(shard, name=name)
    await wait_decided(db, set(drop.accepted))
    seed = await db.fetchval("SELECT draw_seed FROM skus WHERE sku = $1", drop.sku)
    await check_outcome(db, drop, seed, STOCK)
    report = await verify_draw(base, drop.sku)
    assert report.ok and report.entries == 50, report.problems
