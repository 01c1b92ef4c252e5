"""Ingest's routes under test as ingest serves them, without a process: behind admission (every
refusal a problem, capacity never short) and with every caller seen from one client address."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiohttp import web

from config.settings import Settings
from ingest import admission
from ingest.edge.clients import CLIENT
from ingest.edge.process import EDGE
from ingest.state import STATE

LOOPBACK = "127.0.0.1"


def ingest_app(settings: Settings, services: object = None, body_timeout_s: float | None = None,
               client: str = LOOPBACK) -> web.Application:
    """An app to add routes to: `services` stands in for ingest's (None: none), `body_timeout_s`
    for the edge's deadline on a body (None: no edge), and every request comes from `client`."""

    @web.middleware
    async def from_client(request: web.Request, handler: Any) -> web.StreamResponse:
        request[CLIENT] = client
        return await handler(request)

    app = web.Application(client_max_size=settings.body_max_bytes, middlewares=[
        admission.middleware(lambda: None, settings.body_max_bytes, settings.retry_after_s),
        from_client])
    if services is not None:
        app[STATE] = services  # type: ignore[assignment]
    if body_timeout_s is not None:
        app[EDGE] = SimpleNamespace(body_timeout_s=body_timeout_s)  # type: ignore[assignment]
    return app
