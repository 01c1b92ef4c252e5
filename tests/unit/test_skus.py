"""The public SKU routes against an in-memory hub and read model: a SKU is answered from what
ingest knows, a name outside the grammar is a 404 charged as a miss, the list pages by name with
a bounded `limit`, and a SKU without a draw has no draw page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from config.settings import Settings
from ingest import skus
from ingest.results import ResultsHub
from proto.messages import SkuState
from tests.unit.ingest_app import LOOPBACK, ingest_app

SETTINGS = Settings()


def sku_state(name: str) -> SkuState:
    return SkuState(sku=name, stock=5, reserved=0, sold=0, price_cents=500, max_per_user=None,
                    payment="none", reservation_ttl_s=60, sale_start_ms=None, sale_end_ms=None)


class Reads:
    """The read model: the SKUs in the hub, and the misses charged to a client."""

    def __init__(self, hub: ResultsHub) -> None:
        self.hub = hub
        self.charged: list[str] = []

    async def sku_state(self, sku: str, client: str) -> SkuState | None:
        state = self.hub.skus.get(sku)
        if state is None:
            self.charged.append(client)
        return state

    def charge(self, client: str) -> None:
        self.charged.append(client)


@pytest.fixture
async def world() -> AsyncIterator[tuple[TestClient, Reads]]:
    hub = ResultsHub(100, 100)
    for name in ("sku-c", "sku-a", "sku-b"):
        hub.put_sku(sku_state(name))
    reads = Reads(hub)
    app = ingest_app(SETTINGS, SimpleNamespace(settings=SETTINGS, hub=hub, reads=reads))
    app.router.add_get("/v1/skus", skus.list_skus)
    app.router.add_get("/v1/skus/{sku}", skus.get_sku)
    app.router.add_get("/v1/skus/{sku}/draw", skus.get_draw)
    async with TestClient(TestServer(app)) as client:
        yield client, reads


async def test_a_known_sku_is_answered_and_an_unknown_one_is_a_charged_404(world):
    client, reads = world
    resp = await client.get("/v1/skus/sku-a")
    assert resp.status == 200 and (await resp.json())["sku"] == "sku-a"
    resp = await client.get("/v1/skus/nope")
    assert resp.status == 404 and reads.charged == [LOOPBACK]
    resp = await client.get("/v1/skus/" + "x" * 300)  # outside the grammar: no lookup at all
    assert resp.status == 404 and reads.charged == [LOOPBACK, LOOPBACK]


async def test_the_list_pages_by_name(world):
    client, _ = world
    first = await (await client.get("/v1/skus?limit=2")).json()
    assert [s["sku"] for s in first["skus"]] == ["sku-a", "sku-b"] and first["next_after"] == "sku-b"
    rest = await (await client.get("/v1/skus?limit=2&after=sku-b")).json()
    assert [s["sku"] for s in rest["skus"]] == ["sku-c"] and rest["next_after"] is None


@pytest.mark.parametrize("limit", ["0", "101", "-1", "1e2", "²"])
async def test_a_limit_outside_its_bounds_is_a_400(world, limit):
    client, _ = world
    resp = await client.get("/v1/skus", params={"limit": limit})
    assert resp.status == 400


async def test_a_sku_without_a_draw_has_no_draw_page(world):
    client, _ = world
    resp = await client.get("/v1/skus/sku-a/draw")
    assert resp.status == 404 and "has no draw" in (await resp.json())["detail"]
