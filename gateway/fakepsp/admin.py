"""The fake PSP's `/admin` API (tests and the bench): rates, counters, forgetting an intent."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from aiohttp import web

from gateway.fakepsp.config import Rates
from gateway.fakepsp.errors import ApiError
from gateway.fakepsp.provider import PSP_KEY

log = logging.getLogger("fakepsp")


async def get_config(request: web.Request) -> web.Response:
    return web.json_response(msgspec.to_builtins(request.app[PSP_KEY].rates))


async def set_config(request: web.Request) -> web.Response:
    psp = request.app[PSP_KEY]
    try:
        changes = msgspec.json.decode(await request.read(), type=dict[str, Any])
        merged = {**msgspec.to_builtins(psp.rates), **changes}
        psp.rates = msgspec.convert(merged, Rates)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ApiError(400, "invalid_request_error", f"Invalid rates: {e}") from None
    log.info("rates changed: %s", merged)
    return web.json_response(msgspec.to_builtins(psp.rates))


async def stats(request: web.Request) -> web.Response:
    psp = request.app[PSP_KEY]
    return web.json_response({**psp.stats, "intents": len(psp.ledger.intents),
                              "refunds_total": len(psp.ledger.refunds)})


async def forget(request: web.Request) -> web.Response:
    # Injects "confirmed purchase without a capture" for reconciliation tests.
    pi = request.app[PSP_KEY].forget_intent(request.match_info["id"])
    if pi is None:
        raise ApiError(404, "invalid_request_error", "no such payment_intent")
    return web.json_response(pi)
