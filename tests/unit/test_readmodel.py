"""ReadModel's lookups against small fakes of Postgres and the intents follower: a purchase the
reader may not read costs what a missing one costs, and the miss budget is spent before the work;
the sold-out path asks Postgres about a click only when it may hold the click's purchase."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from ingest import readmodel
from ingest.follower import IntentsFollower
from ingest.problems import Rejection
from ingest.queue import ShardQueues
from ingest.ratelimit import RateLimiter
from ingest.readmodel import OPERATOR, Reader, ReadModel
from ingest.results import ResultsHub
from proto.ids import id_key, purchase_id
from proto.messages import Purchase
from proto.subjects import Names

SHARDS = 2
KEY = id_key("unit")
DECIDED = purchase_id(KEY, "alice", "decided")
PENDING = purchase_id(KEY, "alice", "pending")
MISSING = purchase_id(KEY, "alice", "never")


class FakePool:
    """`purchases` rows by id; counts queries, and holds each until `gate` opens."""

    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self.rows = rows
        self.queries = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing: Exception | None = None  # the SKUs' query raises it

    async def fetchrow(self, sql: str, *args: Any, **options: Any) -> dict[str, Any] | None:
        self.queries += 1
        await self.gate.wait()
        return self.rows.get(args[0]) if "FROM purchases" in sql else None

    async def fetch(self, sql: str, arg: Any, **options: Any) -> list[dict[str, Any]]:
        self.queries += 1
        await self.gate.wait()
        if "RECURSIVE" in sql:  # the SKUs with purchases, at most `arg`
            return await self.fetch_skus_with_rows(arg)
        return [self.rows[pid] for pid in arg if pid in self.rows]

    async def fetch_skus_with_rows(self, limit: int) -> list[dict[str, Any]]:
        if self.failing is not None:
            raise self.failing
        return [{"sku": sku} for sku in sorted({r["sku"] for r in self.rows.values()})][:limit]


class FakeFollower:
    """Barriers (the follower has read every shard's stream as far as it reaches); counts them."""

    def __init__(self) -> None:
        self.barriers = 0

    async def barrier(self, shard: int) -> None:
        self.barriers += 1


def row(pid: str, user: str) -> dict[str, Any]:
    return {"id": pid, "sku": "tee", "user_id": user, "qty": 1, "status": "confirmed",
            "reason": None, "amount_cents": 100, "accepted_at_ms": 1, "decided_at_ms": 2,
            "updated_at_ms": 2, "expires_at_ms": None, "request_hash": "h", "draw_rank": None}


def reads(burst: int = 1000) -> tuple[ReadModel, FakePool, FakeFollower]:
    pending = Purchase(id=PENDING, sku="tee", qty=1, user_id="alice", request_hash="h",
                       accepted_at_ms=1)
    pool = FakePool({DECIDED: row(DECIDED, "alice")})
    follower = FakeFollower()
    queues = ShardQueues(SHARDS, 100, silence_s=3, silent_accept_max=10, now_s=0.0)
    queues.stored(1, 7, [pending])  # read in shard 1's stream
    model = ReadModel(Names("t"), SHARDS, cast(Any, pool), cast(IntentsFollower, follower),
                      ResultsHub(cache_max=100, waiters_max=10, queues=queues),
                      RateLimiter(rate_per_s=0.001, burst=burst, keys_max=100))
    return model, pool, follower


async def cost(model: ReadModel, pool: FakePool, follower: FakeFollower, pid: str, reader: Reader,
               ) -> tuple[int, int, bool]:
    """(queries, barriers, found) of one lookup."""
    q, b = pool.queries, follower.barriers
    found = await model.lookup(pid, reader, "127.0.0.2")
    return pool.queries - q, follower.barriers - b, found is not None


async def test_not_yours_costs_what_missing_costs():
    model, pool, follower = reads()
    assert await cost(model, pool, follower, DECIDED, Reader("alice"), ) == (1, 0, True)
    assert await cost(model, pool, follower, PENDING, Reader("alice")) == (1, 0, True)
    missing = await cost(model, pool, follower, MISSING, Reader("mallory"))
    assert missing == (2, SHARDS, False)
    # Decided (and now cached), pending, or another buyer's: mallory's lookups all cost the same.
    for pid in (DECIDED, PENDING):
        assert await cost(model, pool, follower, pid, Reader("mallory")) == missing
    assert await cost(model, pool, follower, DECIDED, OPERATOR) == (0, 0, True)  # cached
    assert await cost(model, pool, follower, PENDING, OPERATOR) == (1, 0, True)


async def test_not_yours_is_charged_as_a_miss_and_found_is_not():
    model, pool, _ = reads(burst=3)
    for _ in range(10):  # the owner's reads cost nothing of the budget
        await model.lookup(PENDING, Reader("alice"), "127.0.0.2")
    for pid in (DECIDED, PENDING, MISSING):  # three misses
        assert await model.lookup(pid, Reader("mallory"), "127.0.0.2") is None
    queries = pool.queries
    with pytest.raises(Rejection) as refused:
        await model.lookup(MISSING, Reader("mallory"), "127.0.0.2")
    assert refused.value.status == 429 and refused.value.slug == "too_many_misses"
    assert pool.queries == queries  # refused before any work
    assert await model.lookup(PENDING, Reader("alice"), "127.0.0.3") is not None  # another address


async def test_concurrent_lookups_cannot_run_past_the_budget():
    """32 lookups at once, each waiting on Postgres: only `burst` of them start any work."""
    model, pool, _ = reads(burst=10)
    pool.gate.clear()
    tasks = [asyncio.ensure_future(model.lookup(MISSING, Reader("mallory"), "127.0.0.2"))
             for _ in range(32)]
    await asyncio.sleep(0.01)
    assert pool.queries == 10
    pool.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(r is None for r in results) == 10
    assert all(isinstance(r, Rejection) and r.status == 429 for r in results if r is not None)


async def test_a_sku_lookup_is_charged_before_its_query():
    model, pool, _ = reads(burst=5)
    pool.gate.clear()
    tasks = [asyncio.ensure_future(model.sku_state(f"nope-{n}", "127.0.0.2")) for n in range(20)]
    await asyncio.sleep(0.01)
    assert pool.queries == 5
    pool.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(r is None for r in results) == 5


# -- the sold-out path (after its barrier, for an id not pending) -------------------------------

NEW_CLICK = purchase_id(KEY, "bob", "new")


async def sold_out(started: bool = True) -> tuple[ReadModel, FakePool]:
    """A read model whose follower started with "tee" decided (DECIDED) and "hot" not sold yet."""
    model, pool, _ = reads()
    if started:
        await model.load_skus_before_follower()
    return model, pool


async def sold_out_cost(model: ReadModel, pool: FakePool, pid: str, sku: str) -> tuple[int, bool]:
    """(queries, found) of one sold-out lookup."""
    q = pool.queries
    found = await model.sold_out_purchase(pid, sku)
    return pool.queries - q, found is not None


async def test_sold_out_answers_a_new_click_from_memory_on_a_sku_new_since_the_start():
    model, pool = await sold_out()
    assert model.skus_before_follower == {"tee"}
    for i in range(50):
        assert await sold_out_cost(model, pool, purchase_id(KEY, f"u{i}", "k"), "hot") == (0, False)


async def test_sold_out_asks_postgres_about_an_id_the_follower_read():
    model, pool = await sold_out()
    decided = Purchase(id=NEW_CLICK, sku="hot", qty=1, user_id="bob", request_hash="h",
                       accepted_at_ms=1)
    model.hub.queues.stored(0, 1, [decided])
    model.hub.queues.decided(NEW_CLICK)  # decided, and long gone from the decision cache
    pool.rows[NEW_CLICK] = row(NEW_CLICK, "bob") | {"sku": "hot"}
    assert await sold_out_cost(model, pool, NEW_CLICK, "hot") == (1, True)


async def test_sold_out_asks_postgres_about_every_click_on_a_sku_decided_before_the_start():
    model, pool = await sold_out()  # "tee" has a purchase the follower never read
    assert await sold_out_cost(model, pool, NEW_CLICK, "tee") == (1, False)
    assert await sold_out_cost(model, pool, DECIDED, "tee") == (1, True)


async def test_sold_out_asks_postgres_once_messages_were_skipped():
    model, pool = await sold_out()
    model.hub.queues.skipped()  # an id stored since may never have been read
    assert await sold_out_cost(model, pool, NEW_CLICK, "hot") == (1, False)


@pytest.mark.parametrize("why", ["not_asked", "failed", "too_many"])
async def test_sold_out_asks_postgres_while_the_skus_with_purchases_are_unknown(why, monkeypatch):
    model, pool = await sold_out(started=False)
    if why == "failed":
        pool.failing = TimeoutError()
    if why == "too_many":
        monkeypatch.setattr(readmodel, "SKUS_MAX", 0)
    if why != "not_asked":
        await model.load_skus_before_follower()
    assert model.skus_before_follower is None
    assert await sold_out_cost(model, pool, NEW_CLICK, "hot") == (1, False)
