"""Buyers are who their token says: 401 without a valid one, 403 for a body naming someone else,
caps and keys per verified buyer, and another buyer's purchase reads like a missing one."""

from __future__ import annotations

import aiohttp
import jwt

from tests.auth import TEST_AUDIENCE, TEST_ISSUER, TEST_JWT_SECRET, bearer, pid, token
from tests.integration.test_ingest_flow import Client

PROBLEM = "application/problem+json"


async def test_tokens_are_required_and_the_body_cannot_name_another_buyer(system, settings, db):
    system.start()
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, settings.admin_token)
        assert (await c.put_sku("hot", stock=10, max_per_user=2))[0] == 200
        body = {"sku": "hot", "qty": 1}
        expired = jwt.encode({"sub": "alice", "iss": TEST_ISSUER, "aud": TEST_AUDIENCE, "exp": 1},
                             TEST_JWT_SECRET, algorithm="HS256")
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {expired}"},
                        {"Authorization": f"Basic {token('alice')}"}):
            status, h, problem = await c.call("POST", "/v1/purchases", body, headers)
            assert status == 401 and h["Content-Type"].startswith(PROBLEM), headers
            assert h["WWW-Authenticate"].startswith("Bearer"), headers
            assert problem["type"].endswith("/unauthorized")
        # A body user_id is accepted only when it is the token's subject.
        status, _, problem = await c.call("POST", "/v1/purchases", {**body, "user_id": "bob"},
                                          {"Idempotency-Key": "k1"}, user="alice")
        assert status == 403 and problem["type"].endswith("/forbidden")
        status, _, p = await c.call("POST", "/v1/purchases", body,
                                    {"Idempotency-Key": "k1", "Prefer": "wait=5"}, user="alice")
        assert status == 200 and p["user_id"] == "alice" and p["id"] == pid("alice", "k1")

        # Made-up users in the body do not buy past the cap: the cap is the token's buyer's.
        for i, name in enumerate(("carol", "dave", "erin")):
            await c.call("POST", "/v1/purchases", {**body, "user_id": name}, {"Idempotency-Key": f"x{i}"},
                         user="alice")
        status, _, p2 = await c.buy("hot", "alice", "k2")
        status, _, p3 = await c.buy("hot", "alice", "k3")
        assert (p2["status"], p3["status"], p3["reason"]) == ("confirmed", "rejected", "limit_exceeded")

        # The same key from another buyer is another purchase (no 422 across buyers).
        status, _, bob = await c.buy("hot", "bob", "k1")
        assert status == 200 and bob["status"] == "confirmed" and bob["id"] != p["id"]
    rows = await db.fetch("SELECT user_id, count(*) AS n FROM purchases GROUP BY user_id ORDER BY 1")
    assert [(r["user_id"], r["n"]) for r in rows] == [("alice", 3), ("bob", 1)]


async def test_another_buyers_purchase_reads_like_a_missing_one(system, settings, db):
    system.start()
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, settings.admin_token)
        assert (await c.put_sku("console", stock=5, payment="required"))[0] == 200
        status, _, mine = await c.buy("console", "alice", "k1", payment_token="tok_visa")
        assert status == 200 and mine["status"] == "reserved"
        missing = pid("alice", "never-made")
        for path in (f"/v1/purchases/{mine['id']}", f"/v1/purchases/{mine['id']}?wait=1"):
            status, _, theirs = await c.call("GET", path, user="mallory")
            status_missing, _, gone = await c.call("GET", f"/v1/purchases/{missing}", user="mallory")
            assert status == status_missing == 404
            assert theirs["type"] == gone["type"] and theirs["title"] == gone["title"]
        status, _, _ = await c.call("POST", f"/v1/purchases/{mine['id']}/cancel", user="mallory")
        assert status == 404
        status, _, _ = await c.call("POST", f"/v1/purchases/{mine['id']}/cancel")
        assert status == 401
        # Still reserved: nothing was cancelled by the others.
        status, _, still = await c.call("GET", f"/v1/purchases/{mine['id']}", user="alice")
        assert status == 200 and still["status"] == "reserved"
        # An operator may read any purchase.
        status, _, seen = await c.call("GET", f"/v1/purchases/{mine['id']}", headers=c.admin)
        assert status == 200 and seen["user_id"] == "alice"
    assert await db.fetchval("SELECT status FROM purchases WHERE id = $1", mine["id"]) == "reserved"


async def test_failed_admin_attempts_are_throttled(system, settings):
    system.start_ingest()
    async with aiohttp.ClientSession() as http:
        url = f"{system.base_url}/v1/admin/skus/hot"
        statuses = []
        for _ in range(8):
            async with http.put(url, json={"stock": 1}, headers={"Authorization": "Bearer guess"}) as r:
                statuses.append(r.status)
        assert statuses[:5] == [403] * 5 and statuses[-1] == 429
        # Throttled even with the right token, until the address has waited.
        async with http.put(url, json={"stock": 1}, headers=bearer("x") | {
                "Authorization": f"Bearer {settings.admin_token}"}) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
