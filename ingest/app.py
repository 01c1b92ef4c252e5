"""The ingest HTTP app: routes, the process's connected state, and the ops endpoints.

Where things are: buyer routes in `purchases`, the public SKU routes in `skus`, operator routes in
`admin_routes`, event streams in `events`, the sale page in `page`, the development token helper in
`devtoken`, JSON bodies in `bodies`, `Prefer: wait` in `prefer`, lookups in `readmodel`, what is
refused before any work in `admission`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from importlib import resources

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from config.settings import Settings
from flashsale.problem_json import problem_middleware
from ingest import admission, bodies, devtoken, metrics, page, problems
from ingest.admin_routes import put_sku
from ingest.create import create_purchase
from ingest.edge import process as edge
from ingest.events import routes as event_routes
from ingest.purchases import cancel_purchase, get_purchase
from ingest.skus import get_draw, get_sku, list_skus
from ingest.state import STATE, Services


def openapi_document(settings: Settings) -> bytes:
    """The served OpenAPI document, with the limits this process enforces written in, so that
    a client (or a schema-driven fuzzer) reads the truth."""
    doc = json.loads(resources.files("ingest").joinpath("openapi.json").read_bytes())
    doc["components"]["schemas"]["PurchaseRequest"]["properties"]["qty"]["maximum"] = settings.qty_max
    if not settings.dev_token_endpoint:
        del doc["paths"]["/dev/token"]
    return json.dumps(doc, ensure_ascii=False).encode()


OPENAPI = web.AppKey("openapi", bytes)


def create_app(settings: Settings, front: edge.Edge) -> web.Application:
    """`front` is the process's edge (limits sized at start, see ingest.edge.limits)."""
    app = web.Application(
        client_max_size=settings.body_max_bytes,
        middlewares=[
            # Admission answers and counts the edge's 429s too.
            admission.middleware(
                lambda: app[STATE].batcher.check_capacity(), settings.body_max_bytes,
                settings.retry_after_s, edge.client_step(front),
            ),
        ],
    )
    app[edge.EDGE] = front

    async def connected(app: web.Application) -> AsyncIterator[None]:
        app[STATE] = await Services.connect(settings, front)
        yield
        await app[STATE].close()

    app[OPENAPI] = openapi_document(settings)
    app.cleanup_ctx.append(connected)
    app.router.add_post("/v1/purchases", create_purchase)
    app.router.add_get("/v1/purchases/{id}", get_purchase)
    app.router.add_post("/v1/purchases/{id}/cancel", cancel_purchase)
    app.router.add_get("/v1/skus", list_skus)
    app.router.add_get("/v1/skus/{sku}", get_sku)
    app.router.add_get("/v1/skus/{sku}/draw", get_draw)
    app.router.add_put("/v1/admin/skus/{sku}", put_sku)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/openapi.yaml", openapi_yaml)
    event_routes.setup(app, settings)
    page.setup(app, settings)
    devtoken.setup(app, settings)
    return app


# On the status app: the app whose services its /readyz asks about.
SERVED = web.AppKey("served", web.Application)


def create_metrics_app(served: web.Application, retry_after_s: int) -> web.Application:
    """This process's /metrics and /readyz, for `ingest_metrics_port` on loopback: what operators
    scrape is not on the public port, where it would tell anyone the load and the refusals; and
    on the public port, which several processes share, /readyz answers for whichever one the
    kernel picked, here for this one (`served`, the app create_app made)."""
    app = web.Application(middlewares=[problem_middleware])
    app[SERVED] = served

    async def process_readyz(request: web.Request) -> web.Response:
        return await readiness(request.app[SERVED], retry_after_s)

    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/readyz", process_readyz)
    return app


async def healthz(request: web.Request) -> web.Response:
    return bodies.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    return await readiness(request.app, request.app[STATE].settings.retry_after_s)


async def readiness(app: web.Application, retry_after_s: int) -> web.Response:
    """200 once `app`'s services are connected and answer, else a 503 `not_ready`."""
    svc = app.get(STATE)
    if svc is not None and await svc.ready():
        return bodies.json_response({"status": "ready"})
    return problems.Rejection(
        503, "not_ready", "Not ready", "NATS, the streams or Postgres are not available",
        retry_after_s=retry_after_s,
    ).response()


async def metrics_endpoint(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type=bodies.JSON)


async def openapi_yaml(request: web.Request) -> web.Response:
    # JSON is a subset of YAML 1.2: one document serves both names, no YAML dependency.
    return web.Response(body=request.app[OPENAPI], content_type="application/yaml")
