"""The public SKU routes: one SKU's availability, window and price; the list of SKUs."""

from __future__ import annotations

import heapq

from aiohttp import web

from ingest import edge, http, problems
from ingest.schemas import SkuList, sku_view_of
from ingest.state import STATE, Ingest
from proto.identifiers import SKU
from proto.messages import SkuState

SKU_LIST_MAX = 100  # SKUs per page of GET /v1/skus


async def known_sku(ing: Ingest, request: web.Request) -> SkuState:
    """The state of the SKU named in the path, or a 404 problem. A name outside the SKU grammar
    (proto.identifiers) names nothing: 404 at once, charged as a miss."""
    sku = request.match_info["sku"]
    if not SKU.matches(sku):
        ing.reads.charge(edge.client_of(request))
        raise problems.not_found(f"no SKU {sku!r} (not a SKU name)")
    state = await ing.reads.sku_state(sku, edge.client_of(request))
    if state is None:
        raise problems.not_found(f"no SKU {sku!r}")
    return state


async def get_sku(request: web.Request) -> web.Response:
    return http.json_response(sku_view_of(await known_sku(request.app[STATE], request)))


async def list_skus(request: web.Request) -> web.Response:
    """The SKUs this instance knows (all of them: it loads them at start and follows the result
    stream), by name, a page at a time: `?after=<last name of the previous page>`."""
    skus = request.app[STATE].hub.skus
    limit = _limit(request)
    after = request.query.get("after", "")
    # A page costs one pass over the names, never a sort of all of them.
    names = heapq.nsmallest(limit + 1, (name for name in skus if name > after))
    page = names[:limit]
    return http.json_response(SkuList(
        skus=[sku_view_of(skus[name]) for name in page],
        next_after=page[-1] if len(names) > limit else None,
    ))


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return SKU_LIST_MAX
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3 and 1 <= int(raw) <= SKU_LIST_MAX):
        raise problems.bad_query(f"limit must be an integer in 1..{SKU_LIST_MAX}")
    return int(raw)
