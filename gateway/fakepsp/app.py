"""The fake payment provider's aiohttp application: its routes and the ledger file's flusher.

What is where: `config` (rates and settings), `ledger` (intents and refunds), `provider` (the
operations, idempotency keys and failure knobs, with the Stripe semantics they keep),
`handlers` (the `/v1` API and its auth), `admin` (the `/admin` API).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.fakepsp import admin, handlers
from gateway.fakepsp.config import FakePspConfig, Rates
from gateway.fakepsp.errors import ApiError
from gateway.fakepsp.provider import PSP_KEY, FakePsp

__all__ = ["FLUSH_KEY", "PSP_KEY", "ApiError", "FakePsp", "FakePspConfig", "Rates", "create_app"]

FLUSH_KEY = web.AppKey("flush", asyncio.Task)


def create_app(config: FakePspConfig) -> web.Application:
    app = web.Application(middlewares=[handlers.auth_and_latency])
    app[PSP_KEY] = FakePsp(config)
    app.on_startup.append(_start_flushing)
    app.on_cleanup.append(_stop_flushing)
    add_routes(app.router)
    return app


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/v1/payment_intents", handlers.create_intent)
    router.add_get("/v1/payment_intents", handlers.list_intents)
    router.add_get("/v1/payment_intents/search", handlers.search_intents)
    router.add_get("/v1/payment_intents/{id}", handlers.get_intent)
    router.add_post("/v1/payment_intents/{id}/confirm", handlers.confirm_intent)
    router.add_post("/v1/payment_intents/{id}/capture", handlers.capture_intent)
    router.add_post("/v1/payment_intents/{id}/cancel", handlers.cancel_intent)
    router.add_post("/v1/refunds", handlers.create_refund)
    router.add_get("/admin/config", admin.get_config)
    router.add_post("/admin/config", admin.set_config)
    router.add_get("/admin/stats", admin.stats)
    router.add_delete("/admin/payment_intents/{id}", admin.forget)
    router.add_get("/healthz", handlers.healthz)


async def _start_flushing(app: web.Application) -> None:
    app[FLUSH_KEY] = asyncio.create_task(app[PSP_KEY].flush_forever())


async def _stop_flushing(app: web.Application) -> None:
    app[FLUSH_KEY].cancel()
    app[PSP_KEY].flush()
