"""Buyers cancel their reservations while the gateway captures them: each cancel is answered from
its own outcome. A cancel that won is `200 cancelled` even when the gateway's confirm, refused
because of it, is announced in the same result batch; a cancel that lost to the capture is
`409 cannot_cancel` and the purchase is confirmed. Every answer matches what Postgres holds."""

from __future__ import annotations

import asyncio
import random

import aiohttp

from tests.auth import pid
from tests.integration.test_gateway_e2e import PRICE_CENTS, SKU, make_saga
from tests.integration.test_ingest_flow import Client

BUYERS = 60


async def test_cancels_racing_captures_are_answered_from_their_own_outcome(system, settings, db):
    # Captures land 0.2 s after the reservation; buyers cancel 0 to 1.2 s after theirs, so
    # cancels and confirms reach the writer in the same batches.
    saga = await make_saga(system, settings, db, psp_timeout_s=3.0)
    try:
        saga.admin.set_rates(decline_rate=0, timeout_rate=0, lost_rate=0, capture_latency_ms=200)
        saga.start_committers()
        saga.start_gateway()
        system.start_ingest()
        rng = random.Random(15)
        async with aiohttp.ClientSession() as http:
            c = Client(http, system.base_url, saga.settings.admin_token)
            status, _, _ = await c.put_sku(SKU, stock=BUYERS, price_cents=PRICE_CENTS,
                                           payment="required", reservation_ttl_s=5)
            assert status == 200

            async def buy_then_cancel(i: int) -> tuple[str, int, dict]:
                user = f"buyer-{i}"
                status, _, p = await c.buy(SKU, user, "k", payment_token="tok_visa")
                assert status == 200 and p["status"] == "reserved", p
                await asyncio.sleep(rng.uniform(0, 1.2))
                status, _, answer = await c.call("POST", f"/v1/purchases/{p['id']}/cancel",
                                                 headers={"Prefer": "wait=5"}, user=user)
                return p["id"], status, answer

            answers = await asyncio.gather(*(buy_then_cancel(i) for i in range(BUYERS)))

        async def settled() -> bool:
            return bool(await db.fetchval(
                "SELECT count(*) = 0 FROM purchases WHERE sku = $1 AND status = 'reserved'", SKU))

        await saga.until(settled, timeout_s=30)
        rows = {r["id"]: (r["status"], r["reason"]) for r in await db.fetch(
            "SELECT id, status, reason FROM purchases WHERE sku = $1", SKU)}
        assert set(rows) == {pid(f"buyer-{i}", "k") for i in range(BUYERS)}
        seen = {"cancelled": 0, "confirmed": 0}
        for purchase_id, status, answer in answers:
            final = rows[purchase_id]
            if status == 200:
                assert answer["status"] == "cancelled" and final == ("cancelled", "buyer_cancelled"), (
                    answer, final)
                seen["cancelled"] += 1
            else:
                assert status == 409 and answer["type"].endswith("/cannot_cancel"), answer
                assert final == ("confirmed", None), (answer, final)
                seen["confirmed"] += 1
        print("cancel race:", seen)
        await saga.settle_money()  # a refused confirm's capture is refunded
    finally:
        await saga.close()
