"""A drop with a draw through the whole stack: entries pending, one per buyer, decided in the
committed seed's order, the seed revealed, the order recomputed from the public endpoints."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

import aiohttp
import asyncpg

from ingest.schemas import iso_ms
from launch.verify_draw import verify_draw
from proto.clock import now_ms
from proto.draw import DRAW_GRACE_MS, draw_order
from tests.auth import bearer
from tests.integration.test_flood import create_sku
from tests.util import eventually


@dataclass
class Drop:
    sku: str
    start_ms: int
    window_s: int
    view: dict  # GET /v1/skus/{sku} right after creation
    accepted: dict[str, str] = field(default_factory=dict)  # purchase id -> buyer

    @property
    def decides_at_ms(self) -> int:
        return self.start_ms + self.window_s * 1000 + DRAW_GRACE_MS


async def open_drop(base_url: str, admin_token: str, sku: str, stock: int, window_s: int = 2,
                    lead_ms: int = 1500, **fields) -> Drop:
    start_ms = now_ms() + lead_ms
    view = await create_sku(base_url, admin_token, sku, stock=stock, sale_start=iso_ms(start_ms),
                            draw_window_s=window_s, **fields)
    return Drop(sku, start_ms, window_s, view)


async def until(t_ms: int) -> None:
    await asyncio.sleep(max(0.0, (t_ms - now_ms()) / 1000))


async def buy(http: aiohttp.ClientSession, base_url: str, sku: str, user: str, key: str,
              wait_s: int = 0) -> tuple[int, dict]:
    headers = {**bearer(user), "Idempotency-Key": key}
    if wait_s:
        headers["Prefer"] = f"wait={wait_s}"
    async with http.post(f"{base_url}/v1/purchases", json={"sku": sku, "qty": 1},
                         headers=headers) as r:
        return r.status, await r.json()


async def enter(http: aiohttp.ClientSession, base_url: str, drop: Drop, users: list[str]) -> None:
    for status, body in await asyncio.gather(
        *(buy(http, base_url, drop.sku, u, f"k-{u}") for u in users)
    ):
        assert status == 202, body
        drop.accepted[body["id"]] = body["user_id"]


async def wait_decided(db: asyncpg.Connection, ids: set[str], timeout_s: float = 60) -> None:
    async def done() -> bool:
        n = await db.fetchval("SELECT count(*) FROM purchases WHERE id = ANY($1)", list(ids))
        return bool(n == len(ids))
    await eventually(done, timeout_s=timeout_s)


async def check_outcome(db: asyncpg.Connection, drop: Drop, seed: str, stock: int) -> None:
    """Every accepted entry decided once, in the pure function's order; the first `stock` win."""
    rows = await db.fetch(
        "SELECT id, status, reason, draw_rank FROM purchases WHERE sku = $1 AND id = ANY($2)",
        drop.sku, list(drop.accepted),
    )
    assert len(rows) == len(drop.accepted)
    order = draw_order(seed, drop.accepted)
    by_rank = sorted(rows, key=lambda r: r["draw_rank"])
    assert [r["id"] for r in by_rank] == order
    assert [r["draw_rank"] for r in by_rank] == list(range(1, len(order) + 1))
    assert [r["status"] for r in by_rank] == (
        ["confirmed"] * min(stock, len(order)) + ["rejected"] * max(0, len(order) - stock))
    assert await db.fetchval("SELECT count(*) FROM draw_entries WHERE sku = $1", drop.sku) == 0
    sold = await db.fetchval("SELECT sold FROM skus WHERE sku = $1", drop.sku)
    assert sold == min(stock, len(order))


async def test_a_drop_with_a_draw(system, settings, db):
    system.start()
    base = system.base_url
    drop = await open_drop(base, settings.admin_token, "drop-1", stock=3, max_per_user=1)
    draw = drop.view["draw"]
    assert draw["state"] == "scheduled" and draw["seed"] is None and len(draw["commitment"]) == 64
    async with aiohttp.ClientSession() as http:
        early = await buy(http, base, drop.sku, "early", "k-early", wait_s=5)
        assert early[1]["status"] == "rejected" and early[1]["reason"] == "sale_not_open"
        await until(drop.start_ms + 50)
        await enter(http, base, drop, [f"buyer-{i}" for i in range(8)])
        # A further key of a buyer already in the draw adds no chance.
        status, twin = await buy(http, base, drop.sku, "buyer-0", "k-twin", wait_s=5)
        assert status == 200
        assert (twin["status"], twin["reason"]) == ("rejected", "already_in_draw")
        pid = next(iter(drop.accepted))
        async with http.get(f"{base}/v1/purchases/{pid}", headers=bearer(drop.accepted[pid])) as r:
            pending = await r.json()
        assert pending["status"] == "pending" and set(pending["queue"]) == {"draw"}
        assert pending["queue"]["draw"]["closes_at"] == drop.view["draw"]["closes_at"]
        async with http.get(f"{base}/v1/skus/{drop.sku}") as r:
            assert (await r.json())["draw"]["entries"] == 8

        await wait_decided(db, set(drop.accepted))
        assert now_ms() >= drop.decides_at_ms
        async with http.get(f"{base}/v1/skus/{drop.sku}") as r:
            draw = (await r.json())["draw"]
        assert draw["state"] == "drawn" and draw["entries"] == 8
        assert hashlib.sha256(bytes.fromhex(draw["seed"])).hexdigest() == draw["commitment"]
        await check_outcome(db, drop, draw["seed"], stock=3)
        async with http.get(f"{base}/v1/purchases/{pid}", headers=bearer(drop.accepted[pid])) as r:
            decided = await r.json()
        rank = draw_order(draw["seed"], drop.accepted).index(pid) + 1
        assert decided["draw"] == {"rank": rank, "entries": 8, "verify": f"/v1/skus/{drop.sku}/draw"}
        async with http.get(f"{base}/v1/skus/{drop.sku}/draw", params={"limit": "5"}) as r:
            page = await r.json()
        assert [e["rank"] for e in page["entries"]] == [1, 2, 3, 4, 5] and page["next_after"] == 5
        # After the draw: first come first served (here: ingest's sold-out fast path).
        late = await buy(http, base, drop.sku, "late", "k-late", wait_s=5)
        assert late[0] == 409, late

    report = await verify_draw(base, drop.sku, page_size=3)
    assert report.ok, report.problems
    assert report.entries == 8


async def test_draw_settings_are_checked(system, settings):
    system.start()
    base = system.base_url
    auth = {"Authorization": f"Bearer {settings.admin_token}"}
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{base}/v1/admin/skus/nostart", json={"stock": 1, "draw_window_s": 2},
                            headers=auth) as r:
            assert r.status == 409 and "sale_start" in (await r.json())["detail"]
        async with http.put(f"{base}/v1/admin/skus/toolong",
                            json={"stock": 1, "draw_window_s": 10**6}, headers=auth) as r:
            assert r.status == 422
        drop = await open_drop(base, settings.admin_token, "fixed", stock=1, lead_ms=300)
        await until(drop.start_ms + 10)
        async with http.put(f"{base}/v1/admin/skus/fixed", json={"stock": 1, "draw_window_s": 5},
                            headers=auth) as r:
            assert r.status == 409
        async with http.get(f"{base}/v1/skus/fixed/draw") as r:
            before = await r.json()
        assert before["entries"] == [] and before["draw"]["seed"] is None
        async with http.get(f"{base}/v1/skus/fixed/draw", params={"after": "x"}) as r:
            assert r.status == 400
        await create_sku(base, settings.admin_token, "plain", stock=1)
        async with http.get(f"{base}/v1/skus/plain/draw") as r:
            assert r.status == 404


async def test_an_entry_is_cancelled_once_decided_never_lost(system, settings, db):
    """An entry holds no stock until the draw: its cancel is a 409 that says when to ask again,
    and the cancel of the reservation it wins goes through (no earlier cancel swallows it)."""
    system.start()
    base = system.base_url
    drop = await open_drop(base, settings.admin_token, "paid-drop", stock=1, payment="required")
    buyer = {**bearer("winner"), "Idempotency-Key": "k-winner"}
    async with aiohttp.ClientSession() as http:
        await until(drop.start_ms + 50)
        async with http.post(f"{base}/v1/purchases", headers=buyer,
                             json={"sku": drop.sku, "qty": 1, "payment_token": "tok_visa"}) as r:
            assert r.status == 202
            pid = (await r.json())["id"]
        cancel = f"{base}/v1/purchases/{pid}/cancel"
        async with http.post(cancel, headers={**bearer("winner"), "Prefer": "wait=2"}) as r:
            refused = await r.json()
        assert r.status == 409 and refused["type"].endswith("/cannot_cancel"), refused
        assert drop.view["draw"]["decides_at"] in refused["detail"]
        await wait_decided(db, {pid})
        # No gateway runs here: the winner's reservation stays until it is cancelled.
        assert await db.fetchval("SELECT status FROM purchases WHERE id = $1", pid) == "reserved"
        async with http.post(cancel, headers={**bearer("winner"), "Prefer": "wait=10"}) as r:
            done = await r.json()
        assert (r.status, done["status"]) == (200, "cancelled"), done
    row = await db.fetchrow("SELECT reserved, sold FROM skus WHERE sku = $1", drop.sku)
    assert (row["reserved"], row["sold"]) == (0, 0)
