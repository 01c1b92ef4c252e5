"""A standby committer per shard: it waits while the writer renews its lease, takes the shard over
once the writer stalls (SIGSTOP) past the lease TTL, and the old writer, woken up, is fenced: it
commits and announces nothing more and exits with code 3. A restarted committer does not steal
its predecessor's live lease."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time

import aiohttp
import pytest

from committer.recovery import EXIT_FENCED
from launch.processes import Process, committer_ready_url, spare_port
from proto.sharding import shard_of
from tests.auth import bearer
from tests.chaos import scaled
from tests.chaos.test_committer_kill import wait_rows
from tests.flood import check_invariants, plan, post_all
from tests.history import check_history, read_results
from tests.hostile import Hostile
from tests.integration.test_flood import create_sku

pytestmark = pytest.mark.chaos

STOCK = 500


def log_lines(p: Process, msg: str) -> list[dict[str, object]]:
    out = []
    for line in p.log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == msg:
            out.append(entry)
    return out


async def wait_log(p: Process, msg: str, timeout_s: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = log_lines(p, msg)
        if found:
            return found[0]
        if not p.alive:
            raise AssertionError(f"{p.name} exited:\n{p.log_tail()}")
        await asyncio.sleep(0.05)
    raise AssertionError(f"{p.name} never logged {msg!r}:\n{p.log_tail()}")


def same_shard_sku(settings, shard: int) -> str:
    return next(f"probe-{i}" for i in range(1000) if shard_of(f"probe-{i}", settings.shards) == shard)


async def keep_buying(base_url: str, sku: str, accepted: list[str], interval_s: float = 0.05) -> None:
    """One purchase every `interval_s` until cancelled; appends the ids accepted."""
    async with aiohttp.ClientSession() as http:
        for i in itertools.count():
            async with http.post(f"{base_url}/v1/purchases",
                                 json={"sku": sku, "qty": 1},
                                 headers={"Idempotency-Key": f"probe-{i}", **bearer(f"prober-{i}")}) as r:
                if r.status in (200, 202):
                    accepted.append((await r.json())["id"])
            await asyncio.sleep(interval_s)


async def takeover_done(db, shard: int, epoch: int) -> bool:
    """The new holder has committed a decision (Postgres's clock on both sides of the compare)."""
    return bool(await db.fetchval(
        """SELECT EXISTS (SELECT 1 FROM purchases p, shard_leases l
                          WHERE l.shard = $1 AND l.epoch > $2 AND p.decided_at_ms >= l.acquired_at_ms)""",
        shard, epoch))


async def test_sigstop_writer_standby_takes_over(system, settings, db):
    system.start()
    await create_sku(system.base_url, settings.admin_token, "hot", stock=STOCK, price_cents=999,
                     max_per_user=1)
    shard = shard_of("hot", settings.shards)
    writer = system.processes[f"committer-{shard}"]
    standby = system.start_committer(shard, name="standby", status_port=spare_port(settings), wait=False)
    await wait_log(standby, "standby: lease held")
    epoch = await db.fetchval("SELECT epoch FROM shard_leases WHERE shard = $1", shard)

    # Purchases of a second SKU on the shard keep arriving while the writer is stopped (the
    # flood may be over by then): the first one decided after the stop times the take-over.
    probe = same_shard_sku(settings, shard)
    await create_sku(system.base_url, settings.admin_token, probe, stock=100_000)
    attempts = plan("hot", requests=scaled(5000), users=scaled(3000), seed=13)
    flood = asyncio.create_task(post_all(system.base_url, attempts, concurrency=300,
                                         hostile=Hostile(settings)))
    await wait_rows(db, 300, flood)
    stopped_at = time.monotonic()
    writer.proc.send_signal(signal.SIGSTOP)
    probe_ids: list[str] = []
    probing = asyncio.create_task(keep_buying(system.base_url, probe, probe_ids))
    try:
        for _ in range(int(30 / 0.02)):
            if await takeover_done(db, shard, epoch):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"no decision by a new holder 30 s after SIGSTOP:\n{standby.log_tail()}")
        takeover_s = time.monotonic() - stopped_at
        batches_before = len((await read_results(settings)).batches)
    finally:
        writer.proc.send_signal(signal.SIGCONT)
        probing.cancel()
    await asyncio.gather(probing, return_exceptions=True)
    print(f"take-over: SIGSTOP of the writer -> first decision committed by the standby: {takeover_s:.2f} s"
          f" (lease_ttl_s={settings.lease_ttl_s})")

    # Woken up, the old writer is fenced by its next batch (or lease renewal) and exits.
    for _ in range(int(20 / 0.05)):
        if not writer.alive:
            break
        await asyncio.sleep(0.05)
    assert writer.proc.returncode == EXIT_FENCED, writer.log_tail()
    assert log_lines(writer, "stopping: fenced")
    assert await db.fetchval("SELECT epoch FROM shard_leases WHERE shard = $1", shard) == epoch + 1
    assert standby.alive

    result = await flood
    summary = await check_invariants(db, result, "hot", STOCK, max_per_user=1)
    assert summary["confirmed"] == STOCK
    history = await check_history(db, settings, set(result.accepted()) | set(probe_ids))
    print("history:", history)
    # After the standby's take-over, the old epoch announced at most the one batch it may have
    # committed just before it stopped (committed, so true); nothing it decided after waking up.
    late = [b for b in (await read_results(settings)).batches[batches_before:]
            if b.shard == shard and b.epoch == epoch and (b.decisions or b.refusals or b.skus)]
    assert len(late) <= 1, late


async def test_restart_waits_for_the_old_lease(system, settings, db):
    system.start(ingest=False)
    shard = 0
    name = f"committer-{shard}"
    old = system.processes[name]
    epoch = await db.fetchval("SELECT epoch FROM shard_leases WHERE shard = $1", shard)
    old_owner = await db.fetchval("SELECT owner FROM shard_leases WHERE shard = $1", shard)
    old.kill9()
    killed_at = time.monotonic()
    new = system.start_committer(shard, name=name, wait=False)
    # The killed process's lease is still live: the new one (another pid, another owner) waits.
    held = await wait_log(new, "standby: lease held")
    assert held["holder"] == old_owner and held["epoch"] == epoch
    await asyncio.to_thread(new.wait_http_ok, committer_ready_url(settings, shard))
    restart_s = time.monotonic() - killed_at
    took = log_lines(new, "standby took over")
    assert took and took[0]["previous_owner"] == old_owner and took[0]["epoch"] == epoch + 1
    assert await db.fetchval("SELECT epoch FROM shard_leases WHERE shard = $1", shard) == epoch + 1
    print(f"kill -9 -> restarted committer ready: {restart_s:.2f} s (lease_ttl_s={settings.lease_ttl_s})")


async def test_clean_stop_hands_over_at_once(system, settings, db):
    """SIGTERM releases the lease: the next committer takes the shard without waiting."""
    system.start(ingest=False)
    shard = 1
    name = f"committer-{shard}"
    epoch = await db.fetchval("SELECT epoch FROM shard_leases WHERE shard = $1", shard)
    assert system.processes[name].stop() == 0
    new = system.start_committer(shard, name=name)
    assert not log_lines(new, "standby: lease held")
    assert await db.fetchval("SELECT epoch FROM shard_leases WHERE shard = $1", shard) == epoch + 1
