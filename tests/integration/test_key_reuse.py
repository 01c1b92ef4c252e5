"""One Idempotency-Key used with SKUs of two shards: one purchase, one decision, one unit taken,
the other body answered 422 (at once where its instance sees the first use, else once the
writers decide), and both shards still deciding afterwards. With and without the writers held
back (SIGSTOP), in both orders, through one instance and through two."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import msgspec
import pytest

from flashsale.ports import free_port
from proto.sharding import shard_of
from tests.auth import pid
from tests.integration.test_draw import open_drop, until, wait_decided
from tests.integration.test_ingest_flow import Client

# Two SKUs of each shard (crc32 % 2).
ON_SHARD = {1: ("A1", "A2"), 0: ("B1", "B2")}
BUYER = "mallory"
REUSED = "idempotency_key_reused"


@contextmanager
def writers_paused(system) -> Iterator[None]:
    """Both committers stopped (SIGSTOP) for the block, as under any backlog."""
    writers = [system.processes[f"committer-{shard}"].proc for shard in (0, 1)]
    for p in writers:
        os.kill(p.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for p in writers:
            os.kill(p.pid, signal.SIGCONT)


async def buy(c: Client, sku: str, key: str, wait_s: int | None = 5):
    status, _, body = await c.buy(sku, BUYER, key, wait_s=wait_s)
    return status, body


def is_reused(status: int, body: dict) -> bool:
    return status == 422 and body["type"].endswith("/" + REUSED)


async def both_shards_decide(c: Client, round_: str) -> None:
    for shard, (_, fresh) in ON_SHARD.items():
        status, body = await buy(c, fresh, f"fresh-{round_}-{shard}")
        assert status == 200 and body["status"] == "confirmed", (shard, status, body)


@pytest.fixture
def two_ingests(system, settings):
    for shard, skus in ON_SHARD.items():
        assert all(shard_of(s, settings.shards) == shard for s in skus)
    system.start()
    other = msgspec.structs.replace(settings, ingest_port=free_port(), ingest_metrics_port=free_port())
    system.start_ingest(settings=other, name="ingest-2")
    return f"http://127.0.0.1:{other.ingest_port}"


async def test_a_key_reused_across_shards_is_one_purchase(system, settings, db, two_ingests):
    orders = {"a-first": ("A1", "B1"), "b-first": ("B1", "A1")}
    winners: dict[str, str] = {}  # key -> the SKU its purchase is for
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, settings.admin_token)
        c2 = Client(http, two_ingests, settings.admin_token)
        for skus in ON_SHARD.values():
            for sku in skus:
                assert (await c.put_sku(sku, stock=10, payment="none"))[0] == 200

        # Writers running, one instance: the first use is decided and cached, 422 at once.
        for order, (first, second) in orders.items():
            key = f"live-{order}"
            status, body = await buy(c, first, key)
            assert status == 200 and body["status"] == "confirmed", body
            assert is_reused(*await buy(c, second, key, wait_s=None))
            winners[key] = first
        await both_shards_decide(c, "1")

        # An instance that never saw the first use (started after it, or it left the cache):
        # the other body is stored on its own shard; that writer finds the id decided, refuses
        # it and carries on; the waiting request learns 422, a read gets the purchase.
        late = msgspec.structs.replace(settings, ingest_port=free_port(), ingest_metrics_port=free_port())
        system.start_ingest(settings=late, name="ingest-late")
        c3 = Client(http, f"http://127.0.0.1:{late.ingest_port}", settings.admin_token)
        for order, (first, second) in orders.items():
            key = f"live-{order}"
            assert is_reused(*await buy(c3, second, key))
            assert is_reused(*await buy(c3, second, key, wait_s=None))  # and so does its retry
            status, _, read = await c3.call("GET", f"/v1/purchases/{pid(BUYER, key)}", user=BUYER)
            assert status == 200 and (read["sku"], read["status"]) == (first, "confirmed"), read
        await both_shards_decide(c, "2")

        # Writers held back, one instance: the first use is pending here, 422 at once.
        with writers_paused(system):
            for order, (first, second) in orders.items():
                key = f"paused-{order}"
                status, body = await buy(c, first, key, wait_s=None)
                assert status == 202 and body["status"] == "pending", body
                assert is_reused(*await buy(c, second, key, wait_s=None))
                winners[key] = first
        await both_shards_decide(c, "3")

        # Writers held back, two instances at the same moment: each may not have read the other's
        # request yet (its follower reads it within milliseconds), so both may be stored (202,
        # one purchase id), or the later one is a 422 at once. The writers decide the id once,
        # for whichever intent is committed first; the other is refused. Each body's waiting
        # request learns which.
        with writers_paused(system):
            for order, (first, second) in orders.items():
                key = f"split-{order}"
                (s1, b1), (s2, b2) = await asyncio.gather(
                    buy(c, first, key, wait_s=None), buy(c2, second, key, wait_s=None))
                stored = [b for status, b in ((s1, b1), (s2, b2)) if status == 202]
                assert stored and all(b["id"] == pid(BUYER, key) for b in stored), (b1, b2)
                assert all(status == 202 or is_reused(status, b) for status, b in ((s1, b1), (s2, b2)))
        for order, (first, second) in orders.items():
            key = f"split-{order}"
            answers = {sku: await buy(client, sku, key) for sku, client in ((first, c), (second, c2))}
            won = [sku for sku, (status, body) in answers.items() if status == 200]
            assert len(won) == 1, answers
            assert answers[won[0]][1]["status"] == "confirmed"
            assert all(is_reused(*a) for sku, a in answers.items() if sku != won[0]), answers
            winners[key] = won[0]
        await both_shards_decide(c, "4")

    # Postgres: one row per key, for the SKU that won; each unit taken once.
    rows = {r["id"]: r for r in await db.fetch(
        "SELECT id, sku, status FROM purchases WHERE user_id = $1", BUYER)}
    fresh = {pid(BUYER, f"fresh-{r}-{s}") for r in "1234" for s in ON_SHARD}
    assert set(rows) == {pid(BUYER, k) for k in winners} | fresh
    for key, sku in winners.items():
        assert (rows[pid(BUYER, key)]["sku"], rows[pid(BUYER, key)]["status"]) == (sku, "confirmed")
    sold = {r["sku"]: r["sold"] for r in await db.fetch("SELECT sku, sold FROM skus")}
    for sku in ("A1", "B1"):
        assert sold[sku] == sum(1 for won in winners.values() if won == sku), (sku, sold, winners)
    assert sold["A2"] == sold["B2"] == 4
    assert all(p.alive for p in system.processes.values())


async def test_a_key_reused_for_a_draw_entry_and_a_purchase_of_another_shard(system, settings, db):
    """One key for a first-come-first-served purchase on one shard and an entry in a draw on
    the other, in both orders, through an instance that did not see the first use: the id is
    decided once, the other request learns 422, the draw decides its other entries, and the
    draw's writer goes on deciding."""
    drop = next(f"drop-{i}" for i in range(100) if shard_of(f"drop-{i}", settings.shards) == 0)
    first_come = ON_SHARD[1][0]
    system.start()
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, settings.admin_token)
        assert (await c.put_sku(first_come, stock=10, payment="none"))[0] == 200
        status, _, bought = await c.buy(first_come, "mallory", "k-bought-first", wait_s=5)
        assert status == 200 and bought["status"] == "confirmed", bought
        late = msgspec.structs.replace(settings, ingest_port=free_port(), ingest_metrics_port=free_port())
        system.start_ingest(settings=late, name="ingest-late")
        c2 = Client(http, f"http://127.0.0.1:{late.ingest_port}", settings.admin_token)
        window = await open_drop(system.base_url, settings.admin_token, drop, stock=5, window_s=3)
        await until(window.start_ms + 50)
        entered = {}
        for user, key in (("trudy", "k-entered-first"), ("b1", "k-b1"), ("b2", "k-b2")):
            status, _, body = await c.buy(drop, user, key, wait_s=None)
            assert status == 202 and body["status"] == "pending", body
            entered[body["id"]] = user
        # The second use of each key, on the other shard.
        assert is_reused(*(await c2.buy(drop, "mallory", "k-bought-first", wait_s=5))[::2])
        assert is_reused(*(await c2.buy(first_come, "trudy", "k-entered-first", wait_s=5))[::2])

        await wait_decided(db, set(entered), timeout_s=60)
        status, _, after = await c.buy(drop, "b3", "k-after", wait_s=10)
        assert status == 200 and after["status"] == "confirmed", after

    rows = {r["id"]: r for r in await db.fetch(
        "SELECT id, sku, status, draw_rank FROM purchases WHERE user_id IN ('mallory', 'trudy')")}
    assert {i: (r["sku"], r["status"]) for i, r in rows.items()} == {
        pid("mallory", "k-bought-first"): (first_come, "confirmed"),
        pid("trudy", "k-entered-first"): (drop, "confirmed")}
    assert sorted(r["draw_rank"] for r in await db.fetch(
        "SELECT draw_rank FROM purchases WHERE sku = $1 AND id = ANY($2)", drop, list(entered))) == [1, 2, 3]
    assert await db.fetchval("SELECT count(*) FROM draw_entries") == 0
    sold = {r["sku"]: r["sold"] for r in await db.fetch("SELECT sku, sold FROM skus")}
    assert (sold[first_come], sold[drop]) == (1, 4)
    assert all(p.alive for p in system.processes.values())
