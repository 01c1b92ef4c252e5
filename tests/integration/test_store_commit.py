"""store.commit on a real Postgres: a batch of new purchases is one statement, so all or nothing
without a transaction around it. A lost lease writes nothing; an id another shard's writer holds,
committed before the batch or while it waits on that writer's row, writes nothing of the batch
and names the id (DecidedElsewhere)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from committer import store
from committer.machine import Machine
from committer.step import Sku, Step
from proto.messages import Purchase
from proto.sharding import shard_of

SHARDS = 2
T0 = 1_700_000_000_000
TTL_MS = 3_600_000


def sku_of(shard: int) -> str:
    return next(f"sku-{i}" for i in range(100) if shard_of(f"sku-{i}", SHARDS) == shard)


class Writer:
    """One shard's machine and connection, holding the shard's lease."""

    def __init__(self, shard: int, conn: asyncpg.Connection, epoch: int) -> None:
        self.shard = shard
        self.conn = conn
        self.epoch = epoch
        self.sku = sku_of(shard)
        self.machine = Machine(shard, SHARDS)
        self.machine.load_sku(Sku(sku=self.sku, stock=10))

    def step(self, *ids: str) -> Step:
        return self.machine.step([
            Purchase(id=pid, sku=self.sku, qty=1, user_id="alice", request_hash="h",
                     accepted_at_ms=T0) for pid in ids
        ], T0)

    async def commit(self, step: Step) -> None:
        await store.commit(self.conn, self.shard, self.epoch, TTL_MS, step, T0)


@pytest.fixture
async def writers(settings, db):
    await db.execute("TRUNCATE purchases, skus, shard_leases, draw_entries")
    conns = [await asyncpg.connect(settings.database_url) for _ in range(SHARDS)]
    out = []
    for shard, conn in enumerate(conns):
        epoch, _ = await store.acquire_lease(conn, shard, f"test-{shard}", TTL_MS)
        assert epoch is not None
        out.append(Writer(shard, conn, epoch))
    yield out
    for conn in conns:
        await conn.close()


async def purchase_ids(db) -> list[str]:
    return sorted(r["id"] for r in await db.fetch("SELECT id FROM purchases"))


async def taken_of(db, sku: str) -> int | None:
    taken: int | None = await db.fetchval("SELECT reserved + sold FROM skus WHERE sku = $1", sku)
    return taken


async def test_a_batch_is_written_whole(writers, db):
    a, _ = writers
    await a.commit(a.step("p1", "p2"))
    assert await purchase_ids(db) == ["p1", "p2"]
    assert await taken_of(db, a.sku) == 2


async def test_a_fenced_batch_writes_nothing(writers, db):
    a, _ = writers
    a.epoch -= 1
    with pytest.raises(store.Fenced):
        await a.commit(a.step("p1"))
    assert await purchase_ids(db) == []
    assert await taken_of(db, a.sku) is None


async def test_an_id_another_shard_committed_writes_nothing_of_the_batch(writers, db):
    a, b = writers
    await a.commit(a.step("p1"))
    with pytest.raises(store.DecidedElsewhere) as met:
        await b.commit(b.step("p0", "p1", "p2"))
    assert met.value.ids == ["p1"]
    assert await purchase_ids(db) == ["p1"]
    assert await taken_of(db, b.sku) is None


async def test_an_id_another_shard_commits_meanwhile_writes_nothing_of_the_batch(writers, db):
    a, b = writers
    open_tx = a.conn.transaction()
    await open_tx.start()
    await a.commit(a.step("p1"))  # inserted, not yet committed: b's insert waits on the row
    waiting = asyncio.ensure_future(b.commit(b.step("p0", "p1", "p2")))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await open_tx.commit()
    with pytest.raises(store.DecidedElsewhere) as met:
        await waiting
    assert met.value.ids == ["p1"]
    assert await purchase_ids(db) == ["p1"]
    assert await taken_of(db, b.sku) is None
