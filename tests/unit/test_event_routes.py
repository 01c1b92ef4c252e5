"""The event stream routes as `setup` mounts them (no HEAD: it would hold a connection for a
body it never sends), and why a SKU stream ends: its feed ended it, the server closes, or it
lived its time."""

from __future__ import annotations

import asyncio

from aiohttp import web

from config.settings import Settings
from ingest.events import routes
from ingest.events.sku_feeds import Listener


def test_both_streams_are_mounted_get_only():
    app = web.Application()
    routes.setup(app, Settings())
    methods = {(r.resource.canonical, r.method) for r in app.router.routes() if r.resource}
    assert methods == {("/v1/purchases/{id}/events", "GET"), ("/v1/skus/{sku}/events", "GET")}


class Transport:
    def write(self, data: bytes) -> None:
        pass


async def test_a_sku_stream_ends_for_its_feed_the_server_or_its_time():
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    listener = Listener(Transport(), chunked=True)  # type: ignore[arg-type]
    assert await routes._sku_stream_ends(listener, closed, max_s=0.01) == "done"
    closed.set_result(None)
    assert await routes._sku_stream_ends(listener, closed, max_s=10) == "closed"
    listener.end("slow")
    assert await routes._sku_stream_ends(listener, closed, max_s=10) == "slow"
