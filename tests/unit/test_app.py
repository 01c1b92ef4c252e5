"""The ingest app's shape without a server: every route it serves is in the OpenAPI
document and every documented path is served (one contract, no drift), the document carries
this process's limits and names the dev token route only where it exists, every operation may be
answered by the head guard, and /metrics is only on its own app, with a /readyz of this process."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from config.settings import Settings
from flashsale.head_guard import HEAD_END, guard_answers
from ingest.app import create_app, create_metrics_app, openapi_document
from ingest.state import STATE

SETTINGS = Settings(qty_max=3)
HS256_SECRET = "unit-hs256-secret-of-at-least-32-bytes"
RETRY_AFTER_S = 2
# Served but not in the document: the page's assets and the document itself.
NOT_DOCUMENTED = re.compile(r"^/(static/|openapi\.)")


def served_paths(settings: Settings) -> set[str]:
    app = create_app(settings, SimpleNamespace())  # type: ignore[arg-type]  # the edge runs per request only
    return {r.resource.canonical for r in app.router.routes() if r.resource is not None}


def test_every_served_route_is_documented_and_every_documented_one_served():
    for dev in (False, True):
        settings = Settings(dev_token_endpoint=dev, jwt_hs256_secrets=[HS256_SECRET])
        documented = set(json.loads(openapi_document(settings))["paths"])
        served = {p for p in served_paths(settings) if not NOT_DOCUMENTED.match(p)}
        assert served == documented, (served ^ documented)


def test_the_document_carries_this_process_s_limits():
    doc = json.loads(openapi_document(SETTINGS))
    assert doc["components"]["schemas"]["PurchaseRequest"]["properties"]["qty"]["maximum"] == 3
    assert "/dev/token" not in doc["paths"]
    assert "/dev/token" in json.loads(openapi_document(Settings(dev_token_endpoint=True)))["paths"]


def test_every_operation_documents_the_head_guard_s_answers():
    """The guard answers before any route (431 for a head over head_max_bytes, 400 for a request
    it cannot parse), so every operation may get either, as the problem the guard sends."""
    doc = json.loads(openapi_document(Settings(dev_token_endpoint=True, jwt_hs256_secrets=[HS256_SECRET])))
    missing = {"description": ""}

    def description(response: dict[str, str]) -> str:
        if "$ref" in response:
            response = doc["components"]["responses"][response["$ref"].rpartition("/")[2]]
        return response["description"]

    for answer in guard_answers(SETTINGS.head_max_bytes).values():
        problem = json.loads(answer.partition(HEAD_END)[2])
        status, slug = str(problem["status"]), problem["type"].rpartition("/")[2]
        undocumented = [f"{method} {path}" for path, operations in doc["paths"].items()
                        for method, operation in operations.items()
                        if f"`{slug}`" not in description(operation["responses"].get(status, missing))]
        assert undocumented == [], (status, slug)


async def test_metrics_are_served_on_their_own_app_only():
    assert "/metrics" not in served_paths(SETTINGS)
    async with TestClient(TestServer(create_metrics_app(web.Application(), RETRY_AFTER_S))) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200 and "flashsale_ingest_requests_total" in await resp.text()
        resp = await client.get("/v1/purchases")
        assert resp.status == 404
        assert resp.headers["Content-Type"].startswith("application/problem+json")


class Services:
    def __init__(self, ready: bool) -> None:
        self.is_ready = ready

    async def ready(self) -> bool:
        return self.is_ready


async def test_the_status_port_says_whether_this_process_is_ready():
    """Its /readyz asks the services of this process's app: not ready before they are connected
    (or while they do not answer), ready once they do."""
    served = web.Application()
    async with TestClient(TestServer(create_metrics_app(served, RETRY_AFTER_S))) as client:
        resp = await client.get("/readyz")  # the app's start has not connected its services yet
        assert resp.status == 503 and resp.headers["Retry-After"] == str(RETRY_AFTER_S)
        assert (await resp.json())["type"].endswith("/not_ready")
        served[STATE] = Services(ready=False)  # type: ignore[assignment]
        assert (await client.get("/readyz")).status == 503
        served[STATE] = Services(ready=True)  # type: ignore[assignment]
        resp = await client.get("/readyz")
        assert resp.status == 200 and await resp.json() == {"status": "ready"}
