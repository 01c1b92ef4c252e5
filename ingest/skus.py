"""The public SKU routes: one SKU's availability, window and price; the list of SKUs."""

from __future__ import annotations

import heapq

from aiohttp import web

from ingest import bodies, problems
from ingest.edge.clients import client_of
from ingest.schemas import DrawEntry, DrawList, SkuList, draw_view_of, sku_view_of
from ingest.state import STATE, Services
from proto.clock import now_ms
from proto.identifiers import SKU
from proto.messages import SkuState

SKU_LIST_MAX = 100  # SKUs per page of GET /v1/skus
DRAW_PAGE_MAX = 1000  # entries per page of GET /v1/skus/{sku}/draw
_RANK_DIGITS_MAX = 9


async def known_sku(svc: Services, request: web.Request) -> SkuState:
    """The state of the SKU named in the path, or a 404 problem. A name outside the SKU grammar
    (proto.identifiers) names nothing: 404 at once, charged as a miss."""
    sku = request.match_info["sku"]
    if not SKU.matches(sku):
        svc.reads.charge(client_of(request))
        raise problems.not_found(f"no such SKU (a SKU name is {SKU.describe()})")
    state = await svc.reads.sku_state(sku, client_of(request))
    if state is None:
        raise problems.not_found(f"no SKU {sku!r}")
    return state


async def get_sku(request: web.Request) -> web.Response:
    return bodies.json_response(sku_view_of(await known_sku(request.app[STATE], request)))


async def get_draw(request: web.Request) -> web.Response:
    """A SKU's draw and, once drawn, its entries by rank: `?after=<last rank of the previous
    page>`."""
    svc = request.app[STATE]
    state = await known_sku(svc, request)
    draw = draw_view_of(state, now_ms())
    if draw is None:
        raise problems.not_found(f"SKU {state.sku!r} has no draw")
    limit = _limit(request, DRAW_PAGE_MAX)
    raw = request.query.get("after", "0")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= _RANK_DIGITS_MAX):
        raise problems.bad_query(f"after must be an integer in 0..{10**_RANK_DIGITS_MAX - 1}")
    ranks = (
        await svc.reads.draw_ranks(state.sku, int(raw), limit + 1)
        if state.drawn_at_ms is not None else []
    )
    page = ranks[:limit]
    return bodies.json_response(DrawList(
        sku=state.sku, draw=draw, entries=[DrawEntry(id=pid, rank=rank) for pid, rank in page],
        next_after=page[-1][1] if len(ranks) > limit else None,
    ))


async def list_skus(request: web.Request) -> web.Response:
    """The SKUs this instance knows (all of them: it loads them at start and follows the result
    stream), by name, a page at a time: `?after=<last name of the previous page>`."""
    skus = request.app[STATE].hub.skus
    limit = _limit(request, SKU_LIST_MAX)
    after = request.query.get("after", "")
    # A page costs one pass over the names, never a sort of all of them.
    names = heapq.nsmallest(limit + 1, (name for name in skus if name > after))
    page = names[:limit]
    return bodies.json_response(SkuList(
        skus=[sku_view_of(skus[name]) for name in page],
        next_after=page[-1] if len(names) > limit else None,
    ))


def _limit(request: web.Request, most: int) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return most
    if not (raw.isascii() and raw.isdigit() and len(raw) <= len(str(most))
            and 1 <= int(raw) <= most):
        raise problems.bad_query(f"limit must be an integer in 1..{most}")
    return int(raw)
