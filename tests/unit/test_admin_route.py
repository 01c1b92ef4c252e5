"""The operator's SKU route against an in-memory shard writer (the real ResultsHub and admin
gate): only the admin token gets in, a change goes to the SKU's shard and is answered with the
state the writer applied, a change the writer refuses is a 409, one it does not apply in time a
504 that says it may still be applied, and a malformed one never reaches the writer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from config.settings import Settings
from ingest import admin_routes
from ingest.auth import AdminGate
from ingest.results import ResultsHub
from proto.messages import Refusal, ResultBatch, SkuState, SkuUpsert, intent_decoder
from proto.sharding import shard_of
from tests.unit.ingest_app import ingest_app

TOKEN = "unit-admin-token-of-at-least-32-bytes"
SETTINGS = Settings(shards=2, admin_token=TOKEN)
SKU = "sneaker-42"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CACHE_MAX = 100
BODY_TIMEOUT_S = 5.0


def state_of(upsert: SkuUpsert) -> SkuState:
    return SkuState(sku=upsert.sku, stock=upsert.stock, reserved=0, sold=0, price_cents=500,
                    max_per_user=None, payment="none", reservation_ttl_s=60, sale_start_ms=None,
                    sale_end_ms=None)


class Writer:
    """The shard's intents stream (a change is published alone, on its own subject) and its
    writer: `answer` is "apply", "refuse" or "silent"."""

    def __init__(self, hub: ResultsHub) -> None:
        self.hub = hub
        self.answer = "apply"
        self.stored: list[tuple[int, str, SkuUpsert]] = []

    async def publish(self, subject: str, payload: bytes, *_: Any) -> int:
        shard = int(subject.split(".")[2])  # <namespace>.intents.<shard>.admin.<request id>
        upsert = intent_decoder.decode(payload)
        assert isinstance(upsert, SkuUpsert)
        self.stored.append((shard, subject, upsert))
        if self.answer == "apply":
            batch = ResultBatch(shard=shard, epoch=1, skus=[state_of(upsert)],
                                admin_applied=[upsert.request_id])
        elif self.answer == "refuse":
            batch = ResultBatch(shard=shard, epoch=1, refusals=[
                Refusal("sku_upsert", upsert.request_id, "stock below reserved + sold")])
        else:
            return len(self.stored)
        asyncio.get_running_loop().call_soon(self.hub.apply, batch)
        return len(self.stored)


@pytest.fixture
async def world(monkeypatch) -> AsyncIterator[tuple[TestClient, Writer]]:
    monkeypatch.setattr(admin_routes, "ADMIN_TIMEOUT_S", 0.2)
    hub = ResultsHub(CACHE_MAX, CACHE_MAX)
    writer = Writer(hub)

    async def no_state(sku: str, client: str) -> None:
        return None

    svc = SimpleNamespace(settings=SETTINGS, names=SETTINGS.names, hub=hub, publisher=writer,
                          admin=AdminGate.from_settings(SETTINGS), reads=SimpleNamespace(sku_state=no_state))

    app = ingest_app(SETTINGS, svc, body_timeout_s=BODY_TIMEOUT_S)
    app.router.add_put("/v1/admin/skus/{sku}", admin_routes.put_sku)
    async with TestClient(TestServer(app)) as client:
        yield client, writer


async def put(client: TestClient, sku: str, body: dict[str, Any], headers: dict[str, str] | None = None):
    return await client.put(f"/v1/admin/skus/{sku}", json=body, headers=AUTH if headers is None else headers)


async def test_only_the_admin_token_gets_in(world):
    client, writer = world
    resp = await put(client, SKU, {"stock": 5}, headers={})
    assert resp.status == 401 and "Bearer" in resp.headers["WWW-Authenticate"]
    resp = await put(client, SKU, {"stock": 5}, headers={"Authorization": "Bearer " + "x" * 40})
    assert resp.status == 403
    assert writer.stored == []


async def test_a_change_goes_to_its_shard_and_answers_the_applied_state(world):
    client, writer = world
    resp = await put(client, SKU, {"stock": 5})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["sku"], body["stock"]) == (SKU, 5)
    (shard, subject, upsert), = writer.stored
    assert shard == shard_of(SKU, SETTINGS.shards)
    assert subject == SETTINGS.names.intent(shard, "sku_upsert", upsert.request_id)
    assert resp.headers["X-Request-Id"] == upsert.request_id


async def test_a_refused_change_is_a_409(world):
    client, writer = world
    writer.answer = "refuse"
    resp = await put(client, SKU, {"stock": 0})
    assert resp.status == 409
    assert (await resp.json(content_type=None))["detail"] == "stock below reserved + sold"


async def test_a_change_not_applied_in_time_is_a_504_that_may_still_apply(world):
    client, writer = world
    writer.answer = "silent"
    resp = await put(client, SKU, {"stock": 5})
    assert resp.status == 504 and "Retry-After" in resp.headers
    assert "may still be applied" in (await resp.json(content_type=None))["detail"]


@pytest.mark.parametrize(("sku", "body"), [("bad sku!", {"stock": 5}), (SKU, {"stock": -1}),
                                           (SKU, {"stock": "five"})])
async def test_a_malformed_change_never_reaches_the_writer(world, sku, body):
    client, writer = world
    resp = await put(client, sku, body)
    assert 400 <= resp.status < 500 and resp.status not in (401, 403)
    assert writer.stored == []
