"""End to end through ingest with real committers: admin creates a SKU, buyers buy and wait,
the sold-out fast path, admin refusals, reservations and cancels."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiohttp
import msgspec

from flashsale.ports import free_port
from ingest.readmodel import ReadModel
from ingest.results import ResultsHub
from tests.auth import bearer
from tests.auth import pid as purchase_id
from tests.integration.test_ingest_api import intents_count

PROBLEM = "application/problem+json"


class Client:
    def __init__(self, http: aiohttp.ClientSession, base: str, admin_token: str) -> None:
        self.http = http
        self.base = base
        self.admin = {"Authorization": f"Bearer {admin_token}"}

    async def call(self, method: str, path: str, body=None, headers=None, user: str | None = None):
        """A request, as buyer `user` when given."""
        if user is not None:
            headers = {**bearer(user), **(headers or {})}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as resp:
            return resp.status, resp.headers.copy(), await resp.json(content_type=None)

    async def put_sku(self, sku: str, **fields):
        return await self.call("PUT", f"/v1/admin/skus/{sku}", fields, self.admin)

    async def buy(self, sku: str, user: str, key: str, qty: int = 1, wait_s: int | None = 5, **extra):
        headers = {"Idempotency-Key": key}
        if wait_s is not None:
            headers["Prefer"] = f"wait={wait_s}"
        body = {"sku": sku, "qty": qty, "user_id": user, **extra}
        return await self.call("POST", "/v1/purchases", body, headers, user=user)


async def test_buy_until_sold_out_then_restock(system, settings, db):
    system.start()
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, settings.admin_token)
        status, headers, sku = await c.put_sku(
            "sneaker-42", stock=2, price_cents=1500, max_per_user=1, payment="none",
            sale_start="2020-01-01T00:00:00+02:00",
        )
        assert status == 200, sku
        assert headers["X-Request-Id"]
        assert sku["remaining"] == 2 and sku["price_cents"] == 1500 and sku["max_per_user"] == 1
        assert sku["sale_start"] == "2019-12-31T22:00:00.000Z" and sku["sale_end"] is None
        status, _, public = await c.call("GET", "/v1/skus/sneaker-42")
        assert status == 200 and public == sku

        # Prefer: wait answers the decision; the price is the SKU's, never the client's.
        status, headers, p = await c.buy("sneaker-42", "alice", "k1")
        assert status == 200, p
        assert headers["Preference-Applied"] == "wait=5"
        assert p["status"] == "confirmed" and p["amount_cents"] == 1500 and p["decided_at"]

        status, _, p2 = await c.buy("sneaker-42", "alice", "k2")
        assert status == 200 and p2["status"] == "rejected" and p2["reason"] == "limit_exceeded"

        # Without wait: 202 pending, then a long-poll GET returns the decision.
        status, headers, p3 = await c.buy("sneaker-42", "bob", "k1", wait_s=None)
        assert status == 202 and headers["Location"] == f"/v1/purchases/{p3['id']}"
        status, _, got = await c.call("GET", f"/v1/purchases/{p3['id']}?wait=10&seen=pending", user="bob")
        assert status == 200 and got["status"] == "confirmed"

        status, _, public = await c.call("GET", "/v1/skus/sneaker-42")
        assert public["remaining"] == 0 and public["sold_out"] is True

        # Sold-out fast path: nothing published for a new purchase...
        before = await intents_count(settings)
        status, headers, problem = await c.buy("sneaker-42", "carol", "k1")
        assert status == 409 and headers["Content-Type"].startswith(PROBLEM)
        assert problem["type"].endswith("/sold_out")
        assert await intents_count(settings) == before
        # ...but a retry of an accepted key still gets its purchase.
        status, _, again = await c.buy("sneaker-42", "alice", "k1", wait_s=None)
        assert status == 202 and again["id"] == p["id"] and again["status"] == "confirmed"
        status, _, reused = await c.buy("sneaker-42", "alice", "k1", qty=2, wait_s=None)
        assert status == 422 and reused["type"].endswith("/idempotency_key_reused")
        # An instance started after the sell-out knows it too (from Postgres).
        other = msgspec.structs.replace(settings, ingest_port=free_port(), ingest_metrics_port=free_port())
        system.start_ingest(settings=other, name="ingest-2")
        c2 = Client(http, f"http://127.0.0.1:{other.ingest_port}", settings.admin_token)
        status, _, problem = await c2.buy("sneaker-42", "carol", "k2")
        assert status == 409 and problem["type"].endswith("/sold_out")
        assert await intents_count(settings) == before

        # Admin refusal: stock below what is sold.
        status, _, problem = await c.put_sku("sneaker-42", stock=1)
        assert status == 409 and problem["type"].endswith("/sku_upsert_refused")
        assert "below" in problem["detail"]

        # Restock: the fast path lets buyers through again.
        status, _, sku = await c.put_sku("sneaker-42", stock=3)
        assert status == 200 and sku["remaining"] == 1 and sku["sold_out"] is False
        status, _, p4 = await c.buy("sneaker-42", "carol", "k1")
        assert status == 200 and p4["status"] == "confirmed"

        # Confirmed purchases cannot be cancelled.
        status, _, problem = await c.call("POST", f"/v1/purchases/{p['id']}/cancel", user="alice")
        assert status == 409 and problem["type"].endswith("/cannot_cancel")

        # Unknown SKU: refused by ingest, nothing published.
        status, _, p5 = await c.buy("no-such-sku", "dave", "k1")
        assert status == 422 and p5["type"].endswith("/unknown_sku")

    rows = await db.fetch("SELECT id, status FROM purchases WHERE sku = 'sneaker-42' ORDER BY id")
    confirmed = {r["id"] for r in rows if r["status"] == "confirmed"}
    assert confirmed == {p["id"], p3["id"], p4["id"]}
    assert await db.fetchval("SELECT sold FROM skus WHERE sku = 'sneaker-42'") == 3


async def until_sold_out(c: Client, sku: str) -> None:
    for _ in range(100):
        status, _, public = await c.call("GET", f"/v1/skus/{sku}")
        if status == 200 and public["sold_out"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{c.base} never saw {sku} sold out")


async def test_after_a_sell_out_every_instance_tells_retries_from_new_clicks(system, settings, db):
    """On a sold-out SKU a retry of an accepted purchase gets that purchase, the key with another
    body is a 422, and a new click a 409 that stores nothing, on every instance: one that
    followed the whole sale but remembers too few decisions to answer from its cache (its
    follower read the ids, Postgres has them), and one started after the sell-out (its follower
    never read them: Postgres)."""
    system.start()
    def another(**fields):
        return msgspec.structs.replace(settings, ingest_port=free_port(), ingest_metrics_port=free_port(),
                                       **fields)
    forgetful = another(results_cache_max=1)
    system.start_ingest(settings=forgetful, name="ingest-forgetful")
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, settings.admin_token)
        assert (await c.put_sku("hot-1", stock=2, payment="none"))[0] == 200
        assert (await c.put_sku("cold-1", stock=100, payment="none"))[0] == 200
        bought = {}
        for user in ("alice", "bob"):
            status, _, p = await c.buy("hot-1", user, "k1")
            assert status == 200 and p["status"] == "confirmed", p
            bought[user] = p["id"]
        late = another()
        system.start_ingest(settings=late, name="ingest-late")
        instances = {
            "first": c,
            "forgetful": Client(http, f"http://127.0.0.1:{forgetful.ingest_port}", settings.admin_token),
            "late": Client(http, f"http://127.0.0.1:{late.ingest_port}", settings.admin_token),
        }
        for ci in instances.values():
            await until_sold_out(ci, "hot-1")
        # The forgetful instance's one cached decision is now another SKU's.
        status, _, p = await c.buy("cold-1", "dave", "k1")
        assert status == 200 and p["status"] == "confirmed", p

        before = await intents_count(settings)
        for name, ci in instances.items():
            for user in ("alice", "bob"):
                # Another body first: not answered from a decision the retry would cache.
                status, _, reused = await ci.buy("hot-1", user, "k1", qty=2, wait_s=None)
                assert status == 422 and reused["type"].endswith("/idempotency_key_reused"), (name, reused)
                status, _, again = await ci.buy("hot-1", user, "k1", wait_s=None)
                assert status == 202 and again["id"] == bought[user], (name, again)
                assert again["status"] == "confirmed", (name, again)
            status, _, problem = await ci.buy("hot-1", f"carol-{name}", "k1")
            assert status == 409 and problem["type"].endswith("/sold_out"), (name, problem)
            status, _, _ = await ci.call("GET", f"/v1/purchases/{purchase_id(f'carol-{name}', 'k1')}",
                                         user=f"carol-{name}")
            assert status == 404  # nothing was created
        assert await intents_count(settings) == before  # nor stored

    rows = await db.fetch("SELECT id FROM purchases WHERE sku = 'hot-1'")
    assert {r["id"] for r in rows} == set(bought.values())
    # What an instance started now reads at its start: the SKUs with purchases.
    reads = ReadModel(settings.names, settings.shards, db, cast(Any, None), ResultsHub(10, 10), None)
    await reads.load_skus_before_follower()
    assert reads.skus_before_follower == {"hot-1", "cold-1"}


async def test_reserve_then_cancel(system, settings):
    system.start()  # no gateway: a reservation stays reserved until cancelled or expired
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, settings.admin_token)
        status, _, _ = await c.put_sku("console-x", stock=1, price_cents=49900, payment="required",
                                       reservation_ttl_s=120)
        assert status == 200
        status, _, p = await c.buy("console-x", "erin", "k1", payment_token="tok_visa")
        assert status == 200 and p["status"] == "reserved" and p["expires_at"].endswith("Z")
        assert p["amount_cents"] == 49900
        pid = p["id"]
        assert pid == purchase_id("erin", "k1")

        # A long-poll that sees nothing change returns the same state when its wait ends.
        status, _, same = await c.call("GET", f"/v1/purchases/{pid}?wait=0.3", user="erin")
        assert status == 200 and same["status"] == "reserved"
        status, _, sku = await c.call("GET", "/v1/skus/console-x")
        assert sku["remaining"] == 0 and sku["reserved"] == 1 and sku["sold_out"] is False

        poll = asyncio.create_task(
            c.call("GET", f"/v1/purchases/{pid}", headers={"Prefer": "wait=10"}, user="erin"))
        await asyncio.sleep(0.2)
        status, _, cancelled = await c.call("POST", f"/v1/purchases/{pid}/cancel",
                                            headers={"Prefer": "wait=5"}, user="erin")
        assert status == 200 and cancelled["status"] == "cancelled", cancelled
        assert cancelled["reason"] == "buyer_cancelled"
        status, headers, polled = await asyncio.wait_for(poll, 12)
        assert status == 200 and polled["status"] == "cancelled"
        assert headers["Preference-Applied"] == "wait=10"

        # Cancelling again is idempotent.
        status, _, again = await c.call("POST", f"/v1/purchases/{pid}/cancel", user="erin")
        assert status == 200 and again["status"] == "cancelled"
        status, _, sku = await c.call("GET", "/v1/skus/console-x")
        assert sku["remaining"] == 1 and sku["reserved"] == 0


async def test_cancel_before_the_decision(system, settings, db):
    """A cancel sent while the purchase is pending: 202, then the committer decides; a waiting
    cancel of a purchase that ends up confirmed gets a 409, never a hang."""
    await db.execute(
        "INSERT INTO skus (sku, stock, price_cents, payment, updated_at_ms) VALUES ('tee', 5, 900, 'none', 0)"
    )
    system.start_ingest()  # committers later: the purchase stays pending meanwhile
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, settings.admin_token)
        status, _, p = await c.buy("tee", "frank", "k1", wait_s=None)
        assert status == 202 and p["status"] == "pending"
        status, headers, pending = await c.call("POST", f"/v1/purchases/{p['id']}/cancel", user="frank")
        assert status == 202 and pending["status"] == "pending"
        assert headers["Location"] == f"/v1/purchases/{p['id']}"

        waiting = asyncio.create_task(
            c.call("POST", f"/v1/purchases/{p['id']}/cancel", headers={"Prefer": "wait=15"}, user="frank")
        )
        await asyncio.sleep(0.3)
        for shard in range(settings.shards):
            system.start_committer(shard)
        status, _, problem = await asyncio.wait_for(waiting, 20)
        # payment = none: the purchase is confirmed first, so the cancel is refused.
        assert status == 409 and problem["type"].endswith("/cannot_cancel"), problem
        status, _, final = await c.call("GET", f"/v1/purchases/{p['id']}", user="frank")
        assert final["status"] == "confirmed"


async def test_admin_put_keeps_absent_fields_and_clears_nulls(system, settings, db):
    system.start()
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, settings.admin_token)
        status, _, sku = await c.put_sku("tee", stock=5, price_cents=900, max_per_user=1,
                                         sale_end="2999-01-01T00:00:00Z")
        assert status == 200 and sku["max_per_user"] == 1 and sku["sale_end"] is not None
        status, _, sku = await c.put_sku("tee", stock=6)  # absent: kept
        assert status == 200 and (sku["price_cents"], sku["max_per_user"]) == (900, 1)
        assert sku["sale_end"] is not None
        status, _, sku = await c.put_sku("tee", stock=6, max_per_user=None, sale_end=None)
        assert status == 200 and sku["max_per_user"] is None and sku["sale_end"] is None
        assert sku["price_cents"] == 900
        status, _, problem = await c.put_sku("tee", stock=6, price_cents=None)  # no "none" price
        assert status == 422 and problem["type"].endswith("/validation")
    row = await db.fetchrow("SELECT max_per_user, sale_end_ms, stock FROM skus WHERE sku = 'tee'")
    assert (row["max_per_user"], row["sale_end_ms"], row["stock"]) == (None, None, 6)
