"""The public SKU route: availability, window and price."""

from __future__ import annotations

from aiohttp import web

from ingest import edge, http, problems
from ingest.schemas import SKU_MAX_LEN, sku_view_of
from ingest.state import STATE


async def get_sku(request: web.Request) -> web.Response:
    ing = request.app[STATE]
    sku = request.match_info["sku"]
    state = await ing.reads.sku_state(sku, edge.client_of(request)) if len(sku) <= SKU_MAX_LEN else None
    if state is None:
        raise problems.not_found(f"no SKU {sku!r}")
    return http.json_response(sku_view_of(state))
