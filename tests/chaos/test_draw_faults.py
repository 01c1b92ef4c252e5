"""A drop's writer killed in the draw window, and again at the worst moment of the draw (its
batch committed, nothing acked or announced), or stalled in the window and replaced by a
standby: the writer that carries on holds the same entries, and the outcome is exactly the pure
function of the committed seed and the accepted purchases."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import msgspec
import pytest

from committer.recovery import EXIT_FENCED
from launch.processes import spare_port
from launch.verify_draw import verify_draw
from proto.clock import now_ms
from proto.sharding import shard_of
from tests.chaos.test_standby import wait_log
from tests.hostile import still_deciding
from tests.integration.test_draw import check_outcome, enter, open_drop, until, wait_decided
from tests.util import eventually

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
    # It may die before its readiness URL ever answers: wait for its exit, not for it to be up.
    crashing = system.start_committer(shard, name=name, wait=False)
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
    await still_deciding(base, settings)


async def test_standby_takes_over_mid_window(system, settings, db):
    """The writer stalls (SIGSTOP) in the window; the standby takes the shard, holds the entries
    the writer committed and the intents it took but never acked, and decides the same order.
    The old writer, woken, is fenced."""
    system.start()
    base = system.base_url
    drop = await open_drop(base, settings.admin_token, "drop-standby", stock=STOCK, window_s=3,
                           max_per_user=1)
    shard = shard_of(drop.sku, settings.shards)
    writer = system.processes[f"committer-{shard}"]
    standby = system.start_committer(shard, name="standby", status_port=spare_port(settings),
                                     wait=False)
    await wait_log(standby, "standby: lease held")
    epoch = await db.fetchval("SELECT epoch FROM shard_leases WHERE shard = $1", shard)
    async with aiohttp.ClientSession() as http:
        await until(drop.start_ms + 20)
        await enter(http, base, drop, [f"a-{i}" for i in range(25)])
        assert writer.proc is not None
        writer.proc.send_signal(signal.SIGSTOP)
        try:
            await enter(http, base, drop, [f"b-{i}" for i in range(25)])

            async def taken_over() -> bool:
                now = await db.fetchval("SELECT epoch FROM shard_leases WHERE shard = $1", shard)
                return bool(now > epoch)
            await eventually(taken_over, timeout_s=30)
        finally:
            writer.proc.send_signal(signal.SIGCONT)
    await wait_decided(db, set(drop.accepted))
    for _ in range(400):
        if not writer.alive:
            break
        await asyncio.sleep(0.05)
    assert writer.proc.returncode == EXIT_FENCED, writer.log_tail()
    seed = await db.fetchval("SELECT draw_seed FROM skus WHERE sku = $1", drop.sku)
    await check_outcome(db, drop, seed, STOCK)
    report = await verify_draw(base, drop.sku)
    assert report.ok and report.entries == 50, report.problems
    await still_deciding(base, settings)
