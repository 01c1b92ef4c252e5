"""The Stripe-shaped `/v1` API: form-encoded bodies, `metadata[key]=value`, a Bearer API key.

Each mutating handler reads its form, counts the request and hands the operation to
`FakePsp.run_mutation`, which applies idempotency keys and the failure knobs around it.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.fakepsp.errors import ApiError, error_response, int_param
from gateway.fakepsp.provider import PSP_KEY, FakePsp, Outcome

IntentAction = Callable[[FakePsp, str, dict[str, str]], Outcome]
SEARCH_PREFIX = "metadata['purchase_id']:'"  # the only search query the gateway sends


@web.middleware
async def auth_and_latency(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/healthz":
        return await handler(request)
    psp = request.app[PSP_KEY]
    # Constant time, as a real PSP would: the comparison must not leak the key's prefix.
    if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), psp.auth_header):
        return error_response(401, "invalid_request_error", "Invalid API Key provided.")
    if psp.rates.latency_ms > 0 and not request.path.startswith("/admin"):
        await asyncio.sleep(psp.rates.latency_ms / 1000)
    try:
        return await handler(request)
    except ApiError as e:
        return web.json_response(e.body, status=e.status)


async def form(request: web.Request) -> dict[str, str]:
    try:
        fields = await request.post()
    except ValueError as e:  # a body aiohttp cannot parse as the form it claims to be
        raise ApiError(400, "invalid_request_error", f"Invalid request body: {e}") from None
    return {k: str(v) for k, v in fields.items()}


async def create_intent(request: web.Request) -> web.StreamResponse:
    psp = request.app[PSP_KEY]
    params = await form(request)
    psp.count("req_create")
    return await psp.run_mutation(request, params, params.get("payment_method"),
                                  lambda: psp.create_intent(params))


async def confirm_intent(request: web.Request) -> web.StreamResponse:
    return await _act_on_intent(request, "confirm", FakePsp.confirm_intent)


async def capture_intent(request: web.Request) -> web.StreamResponse:
    return await _act_on_intent(request, "capture", FakePsp.capture_intent)


async def cancel_intent(request: web.Request) -> web.StreamResponse:
    return await _act_on_intent(request, "cancel", FakePsp.cancel_intent)


async def _act_on_intent(request: web.Request, name: str, action: IntentAction) -> web.StreamResponse:
    psp = request.app[PSP_KEY]
    params = await form(request)
    pi_id = request.match_info["id"]
    psp.count(f"req_{name}")
    if name == "capture" and psp.rates.capture_latency_ms > 0:
        await asyncio.sleep(psp.rates.capture_latency_ms / 1000)
    token = psp.ledger.get(pi_id).get("payment_method")
    return await psp.run_mutation(request, params, token, lambda: action(psp, pi_id, params))


async def create_refund(request: web.Request) -> web.StreamResponse:
    psp = request.app[PSP_KEY]
    params = await form(request)
    psp.count("req_refund")
    token = psp.ledger.get(params.get("payment_intent", "")).get("payment_method")
    return await psp.run_mutation(request, params, token, lambda: psp.create_refund(params))


async def get_intent(request: web.Request) -> web.Response:
    return web.json_response(request.app[PSP_KEY].ledger.get(request.match_info["id"]))


async def list_intents(request: web.Request) -> web.Response:
    limit = max(1, min(100, int_param(dict(request.query), "limit", 10)))
    data, has_more = request.app[PSP_KEY].ledger.page(limit, request.query.get("starting_after"))
    return web.json_response({
        "object": "list",
        "url": "/v1/payment_intents",
        "has_more": has_more,
        "data": data,
    })


async def search_intents(request: web.Request) -> web.Response:
    query = request.query.get("query", "")
    if not (query.startswith(SEARCH_PREFIX) and query.endswith("'")):
        raise ApiError(400, "invalid_request_error", "unsupported search query")
    ledger = request.app[PSP_KEY].ledger
    ids = ledger.by_purchase.get(query[len(SEARCH_PREFIX):-1], [])
    return web.json_response({"object": "search_result", "has_more": False,
                              "data": [ledger.intents[i] for i in ids]})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})
