"""Overload answers 503 + Retry-After as problem+json, fast: never a hang, never a 500."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import msgspec

from flashsale.ports import free_port
from launch.nats_server import start_nats
from launch.processes import ingest_metrics_url
from tests.auth import bearer
from tests.conftest import seed_sku
from tests.integration.test_ingest_api import intents_count

BODY = {"sku": "sneaker-42", "qty": 1, "user_id": "u1"}


async def _post(http, base, key):
    started = time.monotonic()
    async with http.post(f"{base}/v1/purchases", json=BODY,
                         headers={"Idempotency-Key": key, **bearer("u1")}) as resp:
        return resp.status, resp.headers.copy(), await resp.read(), time.monotonic() - started


def _assert_overloaded(status, headers, body):
    assert status == 503, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert int(headers["Retry-After"]) >= 1
    assert json.loads(body)["type"].endswith("/overloaded")


async def test_inflight_limit_and_full_stream_are_503(system, settings):
    await seed_sku(settings, "sneaker-42", stock=1000)
    # A stream that fills after a few intents (refused, not dropped: discard new).
    small = msgspec.structs.replace(settings, intents_max_bytes=2048)
    system.settings = small
    system.start_ingest(settings=small)
    no_room = msgspec.structs.replace(small, ingest_port=free_port(), ingest_metrics_port=free_port(),
                                      inflight_max=0)
    system.start_ingest(settings=no_room, name="ingest-2")
    async with aiohttp.ClientSession() as http:
        status, headers, body, _ = await _post(http, f"http://127.0.0.1:{no_room.ingest_port}", "a")
        _assert_overloaded(status, headers, body)

        statuses = []
        for i in range(40):
            status, headers, body, took_s = await _post(http, system.base_url, f"k{i}")
            statuses.append(status)
            assert took_s < 3
            if status == 503:
                _assert_overloaded(status, headers, body)
                break
            assert status == 202, body
        assert statuses[0] == 202 and statuses[-1] == 503, statuses

        async with http.get(ingest_metrics_url(small)) as resp:
            text = await resp.text()
        assert 'flashsale_ingest_sheds_total{cause="stream_full"}' in text


async def test_nats_down_is_503_then_recovers(system, settings, tmp_path):
    await seed_sku(settings, "sneaker-42", stock=1000)
    nats_port = free_port()
    private = start_nats(tmp_path / "nats", nats_port)
    try:
        s = msgspec.structs.replace(settings, nats_url=private.url)
        system.settings = s
        system.start_ingest(settings=s)
        async with aiohttp.ClientSession() as http:
            status, _, body, _ = await _post(http, system.base_url, "before")
            assert status == 202, body

            private.stop()
            status, headers, body, took_s = await _post(http, system.base_url, "during")
            _assert_overloaded(status, headers, body)
            assert took_s < 1
            async with http.get(f"{system.base_url}/readyz") as resp:
                assert resp.status == 503 and "Retry-After" in resp.headers
            async with http.get(f"{system.base_url}/healthz") as resp:
                assert resp.status == 200

            private = start_nats(tmp_path / "nats", nats_port)
            deadline = time.monotonic() + 15
            while True:
                status, _, body, _ = await _post(http, system.base_url, "after")
                if status == 202 or time.monotonic() > deadline:
                    break
                assert status == 503, body
                await asyncio.sleep(0.2)
            assert status == 202, body
            async with http.get(f"{system.base_url}/readyz") as resp:
                assert resp.status == 200

            # The results listener survived the restart: a waiting buyer gets the decision.
            for shard in range(s.shards):
                system.start_committer(shard)
            async with http.post(f"{system.base_url}/v1/purchases", json=BODY,
                                 headers={"Idempotency-Key": "after-2", "Prefer": "wait=10",
                                          **bearer("u1")}) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["status"] == "confirmed"
    finally:
        system.stop()
        private.stop()


async def test_waiters_max_answers_without_waiting(system, settings):
    await seed_sku(settings, "sneaker-42", stock=1000)
    s = msgspec.structs.replace(settings, waiters_max=0)
    system.settings = s
    system.start_ingest(settings=s)  # no committers: nothing is ever decided
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.post(f"{system.base_url}/v1/purchases", json=BODY,
                             headers={"Idempotency-Key": "w", "Prefer": "wait=5", **bearer("u1")}) as resp:
            assert resp.status == 202 and "Preference-Applied" not in resp.headers
            pid = (await resp.json())["id"]
        async with http.get(f"{system.base_url}/v1/purchases/{pid}?wait=5", headers=bearer("u1")) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "pending"
        assert time.monotonic() - started < 2


async def test_a_buyer_over_the_rate_limit_gets_429(system, settings):
    await seed_sku(settings, "sneaker-42", stock=1000)
    s = msgspec.structs.replace(settings, user_rate_per_s=1.0, user_burst=3)
    system.settings = s
    system.start_ingest(settings=s)
    async with aiohttp.ClientSession() as http:
        statuses = []
        for i in range(6):
            status, headers, body, _ = await _post(http, system.base_url, f"k{i}")
            statuses.append(status)
            if status == 429:
                assert headers["Content-Type"].startswith("application/problem+json")
                assert int(headers["Retry-After"]) >= 1
                assert json.loads(body)["type"].endswith("/rate_limited")
        assert statuses[:3] == [202, 202, 202] and 429 in statuses[3:]
        # Another buyer is not held back by the first one's bucket.
        async with http.post(f"{system.base_url}/v1/purchases",
                             json={**BODY, "user_id": "someone-else"},
                             headers=bearer("someone-else")) as resp:
            assert resp.status == 202
    assert await intents_count(settings) == statuses.count(202) + 1

