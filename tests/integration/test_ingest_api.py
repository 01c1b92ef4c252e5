"""Ingest's HTTP contract against real NATS JetStream and Postgres: bad input is a clear 4xx
problem+json that publishes nothing; idempotency keys; reads from any instance."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import msgspec
import nats
from multidict import CIMultiDict

from flashsale.ports import free_port
from launch.processes import ingest_metrics_url
from tests.auth import bearer, pid
from tests.conftest import seed_sku

PROBLEM = "application/problem+json"


async def intents_count(settings) -> int:
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        return sum([(await js.stream_info(settings.names.intents_stream(shard))).state.messages
                    for shard in range(settings.shards)])
    finally:
        await nc.close()


async def post(http, url, body, headers=None, raw=False, user="u1"):
    """POST as `user`, or as the body's user_id when it names one."""
    if isinstance(body, dict) and isinstance(body.get("user_id"), str) and body["user_id"]:
        user = body["user_id"]
    data = body if raw else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **bearer(user), **(headers or {})}
    async with http.post(url, data=data, headers=hdrs) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


async def test_bad_input_is_a_problem_and_publishes_nothing(system, settings, db):
    system.start_ingest()
    url = f"{system.base_url}/v1/purchases"
    good = {"sku": "sneaker-42", "qty": 1, "user_id": "u1"}
    big = json.dumps({**good, "payment_token": "x" * settings.body_max_bytes}).encode()
    cases = [
        # (name, body bytes, extra headers, expected status, problem type slug)
        ("malformed json", b'{"sku": "a", ', {}, 400, "malformed_json"),
        ("not json at all", b"buy!", {}, 400, "malformed_json"),
        ("unknown field", {**good, "price_cents": 1}, {}, 422, "validation"),
        ("qty zero", {**good, "qty": 0}, {}, 422, "validation"),
        ("qty negative", {**good, "qty": -1}, {}, 422, "validation"),
        ("qty over qty_max", {**good, "qty": settings.qty_max + 1}, {}, 422, "validation"),
        ("qty huge", {**good, "qty": 10**30}, {}, 422, "validation"),
        ("qty float", {**good, "qty": 1.5}, {}, 422, "validation"),
        ("qty string", {**good, "qty": "1"}, {}, 422, "validation"),
        ("qty bool", {**good, "qty": True}, {}, 422, "validation"),
        ("missing sku", {"qty": 1, "user_id": "u1"}, {}, 422, "validation"),
        ("empty sku", {**good, "sku": ""}, {}, 422, "validation"),
        ("long sku", {**good, "sku": "s" * 65}, {}, 422, "validation"),
        ("sku with space", {**good, "sku": "a b"}, {}, 422, "validation"),
        ("empty user", {**good, "user_id": ""}, {}, 422, "validation"),
        ("user not a string", {**good, "user_id": 7}, {}, 422, "validation"),
        ("empty payment token", {**good, "payment_token": ""}, {}, 422, "validation"),
        ("unknown sku", {**good, "sku": "no-such-sku"}, {}, 422, "unknown_sku"),
        ("array body", [good], {}, 422, "validation"),
        ("body over the limit", big, {}, 413, "body_too_large"),
        ("empty key", good, {"Idempotency-Key": ""}, 400, "bad_idempotency_key"),
        ("long key", good, {"Idempotency-Key": "k" * 256}, 400, "bad_idempotency_key"),
        ("key with space", good, {"Idempotency-Key": "a b"}, 400, "bad_idempotency_key"),
        ("wrong content type", good, {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ("form content type", good, {"Content-Type": "application/x-www-form-urlencoded"}, 415,
         "unsupported_media_type"),
    ]
    async with aiohttp.ClientSession() as http:
        for name, body, headers, status, slug in cases:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            got_status, got_headers, got_body = await post(http, url, data, headers, raw=True)
            assert got_status == status, (name, got_status, got_body)
            assert got_headers["Content-Type"].startswith(PROBLEM), name
            problem = json.loads(got_body)
            assert problem["type"].endswith("/" + slug), (name, problem)
            assert problem["status"] == status and problem["title"] and problem["detail"], name
            if slug == "validation":
                assert problem["errors"] and problem["errors"][0]["path"].startswith("$"), name

        # A chunked body (no Content-Length) over the limit is cut off too.
        async def chunks():
            for _ in range(settings.body_max_bytes // 512 + 2):
                yield b" " * 512
        async with http.post(url, data=chunks(),
                             headers={"Content-Type": "application/json", **bearer("u1")}) as resp:
            assert resp.status == 413 and resp.content_type == PROBLEM

        # Admin: no token, wrong token, bad body.
        admin = f"{system.base_url}/v1/admin/skus/sneaker-42"
        async with http.put(admin, json={"stock": 5}) as resp:
            assert resp.status == 401 and resp.content_type == PROBLEM
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.put(admin, json={"stock": 5}, headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 403 and resp.content_type == PROBLEM
        auth = {"Authorization": f"Bearer {settings.admin_token}"}
        for body, status in [({"stock": -1}, 422), ({"price_cents": 5}, 422), ({"stock": 1, "x": 1}, 422),
                             ({"stock": 1, "payment": "cash"}, 422),
                             ({"stock": 1, "sale_start": "yesterday"}, 422),
                             ({"stock": 1, "sale_start": "2026-01-02T00:00:00Z",
                               "sale_end": "2026-01-01T00:00:00Z"}, 422)]:
            async with http.put(admin, json=body, headers=auth) as resp:
                assert resp.status == status and resp.content_type == PROBLEM, body
        async with http.put(f"{system.base_url}/v1/admin/skus/bad%20sku", json={"stock": 1},
                            headers=auth) as resp:
            assert resp.status == 422 and resp.content_type == PROBLEM

        # Reads of things that do not exist.
        for path in ["/v1/purchases/nope", f"/v1/purchases/{pid('u', 'k')}", "/v1/skus/none",
                     "/v1/nothing-here"]:
            async with http.get(system.base_url + path, headers=bearer("u")) as resp:
                assert resp.status == 404 and resp.content_type == PROBLEM, path
        async with http.post(f"{system.base_url}/v1/purchases/{pid('u', 'k')}/cancel",
                             headers=bearer("u")) as resp:
            assert resp.status == 404 and resp.content_type == PROBLEM
        async with http.delete(url) as resp:
            assert resp.status == 405 and resp.content_type == PROBLEM
        async with http.get(f"{system.base_url}/v1/purchases/{pid('u', 'k')}?wait=x",
                            headers=bearer("u")) as resp:
            assert resp.status == 400 and resp.content_type == PROBLEM

    assert await intents_count(settings) == 0
    assert await db.fetchval("SELECT count(*) FROM purchases") == 0
    assert await db.fetchval("SELECT count(*) FROM skus") == 0


async def test_idempotency_keys_and_reads_from_another_instance(system, settings):
    """Committers are started only at the end, so purchases stay pending meanwhile."""
    await seed_sku(settings, "sneaker-42", stock=10)
    system.start_ingest()
    other = msgspec.structs.replace(settings, ingest_port=free_port(), ingest_metrics_port=free_port())
    system.start_ingest(settings=other, name="ingest-2")
    url = f"{system.base_url}/v1/purchases"
    other_url = f"http://{other.ingest_host}:{other.ingest_port}"
    body = {"sku": "sneaker-42", "qty": 1, "user_id": "alice"}
    async with aiohttp.ClientSession() as http:
        status, headers, raw = await post(http, url, body, {"Idempotency-Key": "click-1"})
        assert status == 202, raw
        first = json.loads(raw)
        assert first["id"] == pid("alice", "click-1")
        assert first["status"] == "pending" and first["sku"] == "sneaker-42"
        assert first["amount_cents"] is None and first["accepted_at"].endswith("Z")
        assert headers["Location"] == f"/v1/purchases/{first['id']}"
        assert headers["Idempotency-Key"] == "click-1"

        # Retry, same key and body, on either instance: same purchase.
        for base in (url, f"{other_url}/v1/purchases"):
            status, headers, raw = await post(http, base, body, {"Idempotency-Key": "click-1"})
            assert status == 202, raw
            assert json.loads(raw)["id"] == first["id"]
            assert json.loads(raw)["accepted_at"] == first["accepted_at"]  # the original's

        # Same key, another body: 422, nothing published.
        status, headers, raw = await post(http, url, {**body, "qty": 2}, {"Idempotency-Key": "click-1"})
        assert status == 422 and json.loads(raw)["type"].endswith("/idempotency_key_reused")
        status, _, raw = await post(http, url, {**body, "payment_token": "tok_visa"},
                                    {"Idempotency-Key": "click-1"})
        assert status == 422

        # Same key, another user: another purchase.
        status, _, raw = await post(http, url, {**body, "user_id": "bob"}, {"Idempotency-Key": "click-1"})
        assert status == 202 and json.loads(raw)["id"] == pid("bob", "click-1")

        # No key: the server issues one, and a retry with it is the same purchase.
        status, headers, raw = await post(http, url, body)
        assert status == 202
        issued = headers["Idempotency-Key"]
        assert issued and json.loads(raw)["id"] == pid("alice", issued)
        status, _, raw2 = await post(http, url, body, {"Idempotency-Key": issued})
        assert status == 202 and json.loads(raw2)["id"] == json.loads(raw)["id"]

        assert await intents_count(settings) == 3

        # The second instance never saw the POST: pending, not 404.
        async with http.get(f"{other_url}/v1/purchases/{first['id']}", headers=bearer("alice")) as resp:
            assert resp.status == 200
            seen = await resp.json()
            assert seen["status"] == "pending" and seen["id"] == first["id"] and seen["qty"] == 1

        # A long-poll on the second instance wakes up when the committers decide.
        poll = asyncio.create_task(_get_json(http, f"{other_url}/v1/purchases/{first['id']}?wait=20",
                                             bearer("alice")))
        await asyncio.sleep(0.5)
        assert not poll.done()
        for shard in range(settings.shards):
            system.start_committer(shard)
        status, decided = await asyncio.wait_for(poll, 25)
        assert status == 200
        assert decided["status"] == "confirmed" and decided["reason"] is None
        assert decided["decided_at"] is not None

        # And a plain read there now says the same (cache or Postgres).
        status, again = await _get_json(http, f"{other_url}/v1/purchases/{first['id']}", bearer("alice"))
        assert status == 200 and again["status"] == "confirmed"


async def _get_json(http, url, headers=None):
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_service_endpoints(system, settings):
    system.start_ingest()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{system.base_url}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{system.base_url}/readyz") as resp:
            assert resp.status == 200
        for name in ("openapi.json", "openapi.yaml"):
            async with http.get(f"{system.base_url}/{name}") as resp:
                assert resp.status == 200
                spec = json.loads(await resp.read())  # JSON is YAML 1.2 too
            assert spec["openapi"].startswith("3.")
            for path in ("/v1/purchases", "/v1/purchases/{id}", "/v1/purchases/{id}/cancel",
                         "/v1/skus/{sku}", "/v1/admin/skus/{sku}"):
                assert path in spec["paths"], path
            assert "sold_out" in json.dumps(spec["paths"]["/v1/purchases"])
        await post(http, f"{system.base_url}/v1/purchases", {"qty": 0})
        # /metrics is for operators, on its own loopback port.
        async with http.get(f"{system.base_url}/metrics") as resp:
            assert resp.status == 404
            assert resp.headers["Content-Type"].startswith("application/problem+json")
        async with http.get(ingest_metrics_url(settings)) as resp:
            text = await resp.text()
        for metric in ("flashsale_ingest_requests_total", "flashsale_ingest_accept_seconds",
                       "flashsale_ingest_decision_seconds", "flashsale_ingest_inflight_publishes",
                       "flashsale_ingest_waiters", "flashsale_ingest_rejects_total",
                       "flashsale_ingest_sheds_total"):
            assert metric in text, metric
        assert 'route="/v1/purchases",status="422"' in text


async def test_a_header_that_names_one_thing_is_refused_when_sent_twice(system, settings, db):
    """Two Idempotency-Keys would be two purchases, two Authorizations two callers: refused, not
    guessed between, and nothing published."""
    system.start_ingest()
    url = f"{system.base_url}/v1/purchases"
    body = json.dumps({"sku": "sneaker-42", "qty": 1}).encode()
    base = [("Content-Type", "application/json"), *bearer("u1").items()]
    async with aiohttp.ClientSession() as http:
        for extra, status, slug in [
            ([("Idempotency-Key", "a"), ("Idempotency-Key", "b")], 400, "bad_idempotency_key"),
            ([*bearer("u2").items()], 401, "unauthorized"),
        ]:
            async with http.post(url, data=body, headers=CIMultiDict([*base, *extra])) as r:
                problem = await r.json(content_type=None)
            assert (r.status, problem["type"].rsplit("/", 1)[1]) == (status, slug), problem
        async with http.put(f"{system.base_url}/v1/admin/skus/a", data=b'{"stock": 1}',
                            headers=CIMultiDict([("Content-Type", "application/json"),
                                                 ("Authorization", f"Bearer {settings.admin_token}"),
                                                 ("Authorization", "Bearer other")])) as r:
            assert r.status == 401
    assert await db.fetchval("SELECT count(*) FROM purchases") == 0
