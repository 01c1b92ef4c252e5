"""The operator's routes: create or adjust a SKU through its shard's writer, behind the admin token."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from aiohttp import web

from flashsale.sku_changes import AdminError, make_upsert
from ingest import bodies, problems
from ingest.auth import bearer_token
from ingest.edge.clients import client_of
from ingest.errors import Overloaded
from ingest.schemas import SkuUpsertRequest, sku_upsert_decoder, sku_view_of
from ingest.state import STATE, Services
from proto.identifiers import SKU
from proto.messages import Refusal, SkuState, SkuUpsert, encode
from proto.sharding import shard_of

ADMIN_TIMEOUT_S = 10.0  # an operator waits this long for the committer to apply a SKU change


async def put_sku(request: web.Request) -> web.Response:
    svc = request.app[STATE]
    require_admin(svc, request)
    sku = _sku_in_path(request)
    req = await bodies.decode_body(request, sku_upsert_decoder)
    upsert = _upsert(sku, req)
    outcome = await _apply(svc, upsert)
    if isinstance(outcome, Refusal):
        raise problems.Rejection(409, "sku_upsert_refused", "SKU change refused", outcome.reason)
    state = outcome or await svc.reads.sku_state(sku, client_of(request))
    if state is None:
        raise problems.not_found(f"no SKU {sku!r}")
    return bodies.json_response(sku_view_of(state), 200, {"X-Request-Id": upsert.request_id})


def require_admin(svc: Services, request: web.Request) -> None:
    """The admin token, or 401/403 (429 while the address has no attempts left: auth.AdminGate)."""
    token = bearer_token(request)
    if svc.admin.attempt(client_of(request), token, time.monotonic()):
        return
    if token is None:
        raise problems.Rejection(
            401, "unauthorized", "Unauthorized", "send Authorization: Bearer <admin token>",
            headers={"WWW-Authenticate": 'Bearer realm="flashsale-admin"'},
        )
    raise problems.Rejection(403, "forbidden", "Forbidden", "the admin token is not valid")


def _sku_in_path(request: web.Request) -> str:
    sku = request.match_info["sku"]
    if not SKU.matches(sku):
        raise problems.validation("invalid SKU in path", [problems.FieldError("sku", SKU.describe())])
    return sku


def _upsert(sku: str, req: SkuUpsertRequest) -> SkuUpsert:
    given: dict[str, Any] = {
        f: getattr(req, f) for f in req.__struct_fields__ if getattr(req, f) is not msgspec.UNSET
    }
    try:
        return make_upsert(sku, given)
    except AdminError as e:
        field = f"$.{e.field}" if e.field else "$"
        raise problems.validation(str(e), [problems.FieldError(field, str(e))]) from None


async def _apply(svc: Services, upsert: SkuUpsert) -> SkuState | Refusal | None:
    """Publish the change to the SKU's shard and wait until its writer applied or refused it."""
    wait = svc.hub.admin_wait(upsert.request_id, upsert.sku)
    if wait is None:
        raise Overloaded("waiters_max")
    try:
        shard = shard_of(upsert.sku, svc.settings.shards)
        subject = svc.names.intent(shard, "sku_upsert", upsert.request_id)
        # Alone on its own subject: JetStream refuses a second copy of the same request.
        await svc.publisher.publish(subject, encode(upsert), f"admin:{upsert.request_id}")
        try:
            return await asyncio.wait_for(wait.fut, ADMIN_TIMEOUT_S)
        except TimeoutError:
            raise problems.Rejection(
                504, "admin_timeout", "Not applied yet",
                f"the change (request {upsert.request_id}) was queued but not applied within "
                f"{ADMIN_TIMEOUT_S:g} s; it may still be applied: check GET /v1/skus/{upsert.sku}",
                retry_after_s=svc.settings.retry_after_s,
            ) from None
    finally:
        svc.hub.admin_done(upsert.request_id)
