"""Invariants under a flood: 5,000 concurrent POSTs from 3,000 users for 500 units."""

from __future__ import annotations

import aiohttp

from tests.flood import check_invariants, plan, post_all
from tests.hostile import Hostile

STOCK = 500


async def create_sku(base_url: str, token: str, sku: str, **fields) -> dict:
    async with aiohttp.ClientSession() as http, http.put(f"{base_url}/v1/admin/skus/{sku}", json=fields,
                        headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_flood_sells_exactly_the_stock(system, settings, db):
    system.start()
    await create_sku(system.base_url, settings.admin_token, "hot", stock=STOCK, price_cents=999,
                     max_per_user=1)
    attempts = plan("hot", requests=5000, users=3000)
    # Half of the buyers wait for their outcome in the POST itself.
    result = await post_all(system.base_url, attempts, concurrency=300, wait_s=5,
                            hostile=Hostile(settings))
    summary = await check_invariants(db, result, "hot", STOCK, max_per_user=1)
    assert summary["confirmed"] == STOCK
    print("hostile buyers:", summary["hostile"])
    accepted = result.accepted()
    conflicts = [a for a in attempts if a.conflict_expected and a.id is None]
    assert summary["statuses"][422] == sum(1 for a in attempts if a.conflict_expected and a.status == 422)
    assert summary["statuses"][422] > 0
    assert all(a.status in (409, 422) for a in conflicts)
    assert accepted
