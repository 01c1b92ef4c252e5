"""The buyer's routes: create a purchase, read it (long-poll), cancel it.

Each handler is a short list of steps; a step that refuses the request raises
`problems.Rejection` (answered by the admission middleware) or `Overloaded` (a 503).
"""

from __future__ import annotations

import time

from aiohttp import web

from ingest import bodies, prefer, problems
from ingest.auth import bearer_token, looks_like_jwt
from ingest.edge.clients import client_of
from ingest.readmodel import OPERATOR, Reader
from ingest.results import Awaits, PurchaseState, Watch, is_final, status_of
from ingest.schemas import (
    PurchaseView,
    draw_wait_of,
    view_of,
)
from ingest.state import STATE, Services
from proto.identifiers import PURCHASE_ID
from proto.messages import (
    FINAL_STATUSES,
    STATUSES,
    Cancel,
    Purchase,
    Refusal,
    Status,
)
from proto.sharding import shard_of

# Decided states that a cancel can no longer undo.
_NOT_CANCELLABLE: frozenset[Status] = frozenset({"confirmed", "rejected"})


async def get_purchase(request: web.Request) -> web.Response:
    svc = request.app[STATE]
    reader = reader_of(svc, request)
    pid = purchase_id_in_path(svc, request)
    wait_s, preferred = _poll_wait(request, svc.settings.wait_max_s)
    seen = _seen_status(request)
    headers: dict[str, str] = {}
    with svc.hub.watching(pid, wait_s > 0, client=client_of(request), buyer=reader.buyer) as watch:
        current = await owned_purchase(svc, pid, reader, client_of(request))
        if watch is not None:
            current = await _until_changed(watch, current, seen, wait_s)
            if preferred:
                headers["Preference-Applied"] = prefer.preference_applied(wait_s)
    return bodies.json_response(purchase_view(svc, current), 200, headers)


async def cancel_purchase(request: web.Request) -> web.Response:
    svc = request.app[STATE]
    buyer = svc.buyers.buyer(request)
    pid = purchase_id_in_path(svc, request)
    wait_s = prefer.capped_prefer_wait_s(request, svc.settings.wait_max_s)
    headers = {"Location": f"/v1/purchases/{pid}"}
    with svc.hub.watching(pid, wait_s > 0, client=client_of(request), buyer=buyer,
                          awaits=Awaits(kind="cancel")) as watch:
        current = await owned_purchase(svc, pid, Reader(buyer), client_of(request))
        _check_cancellable(pid, status_of(current), None)
        _check_not_in_draw(svc, current)
        if is_final(current):  # cancelled or expired: nothing left to give back
            return bodies.json_response(purchase_view(svc, current), 200, headers)
        await _publish_cancel(svc, current, pid)
        if watch is None:
            return bodies.json_response(purchase_view(svc, current), 202, headers)
        # Answered by this cancel's own outcome: a confirm refused at the same moment (the
        # cancel won the race) is the gateway's business, not this request's.
        current = await watch.until(current, is_final, wait_s)
        headers["Preference-Applied"] = prefer.preference_applied(wait_s)
        _check_cancellable(pid, status_of(current), watch.refusal)
    return bodies.json_response(purchase_view(svc, current), 200 if is_final(current) else 202, headers)


def purchase_view(svc: Services, state: PurchaseState) -> PurchaseView:
    """What a buyer sees of a purchase: its state and, while pending, its place in the queue."""
    queue = svc.hub.queues.view(state.id) if isinstance(state, Purchase) else None
    return view_of(state, queue, svc.hub.skus.get(state.sku))


# -- steps ---------------------------------------------------------------------------------


def reader_of(svc: Services, request: web.Request) -> Reader:
    """Who reads: a buyer (a JWT), or the operator (the admin token). A token of any other shape
    is an attempt at the admin token, charged as one (auth.AdminGate); a wrong one is a 401
    like any bad token."""
    token = bearer_token(request)
    if token is None or looks_like_jwt(token):
        return Reader(svc.buyers.buyer(request))
    if svc.admin.attempt(client_of(request), token, time.monotonic()):
        return OPERATOR
    raise problems.Rejection(
        401, "unauthorized", "Unauthorized", "the token is neither a valid JWT nor the admin token",
        headers={"WWW-Authenticate": 'Bearer realm="flashsale", error="invalid_token"'},
    )


def purchase_id_in_path(svc: Services, request: web.Request) -> str:
    """The purchase id in the path; a name that cannot be one is a 404 like a missing purchase,
    charged as a miss (identifiers: proto.identifiers)."""
    pid = request.match_info["id"]
    if not PURCHASE_ID.matches(pid):
        svc.reads.charge(client_of(request))
        raise problems.not_found(f"no such purchase (a purchase id is {PURCHASE_ID.describe()})")
    return pid


async def owned_purchase(svc: Services, pid: str, reader: Reader, client: str) -> PurchaseState:
    """The purchase, if `reader` may see it. Another buyer's purchase reads exactly like one
    that does not exist: the same answer, after the same lookups (ReadModel.lookup)."""
    current = await svc.reads.lookup(pid, reader, client)
    if current is None:
        raise problems.not_found(f"no purchase {pid}")
    assert current.id == pid, (current.id, pid)
    assert reader.may_read(current.user_id), "lookup never answers with another buyer's purchase"
    return current


def _poll_wait(request: web.Request, wait_max_s: float) -> tuple[float, bool]:
    """(seconds to long-poll, whether the wait came from `Prefer`): `?wait=N` wins over it."""
    query_wait = request.query.get("wait")
    if query_wait is None:
        return prefer.capped_prefer_wait_s(request, wait_max_s), True
    wait_s = prefer.parse_wait(query_wait)
    if wait_s is None:
        raise problems.bad_query("wait must be a number >= 0")
    return min(wait_s, wait_max_s), False


def _seen_status(request: web.Request) -> Status | None:
    seen = request.query.get("seen")
    if seen is None:
        return None
    for status in STATUSES:
        if status == seen:
            return status
    raise problems.bad_query(f"seen must be one of {', '.join(STATUSES)}")


async def _until_changed(
    watch: Watch, current: PurchaseState, seen: Status | None, wait_s: float
) -> PurchaseState:
    """Long-poll until the status differs from `seen` (default: the current one)."""
    status = status_of(current)
    if status in FINAL_STATUSES:  # a final state never changes
        return current
    baseline = seen or status
    if baseline != status:
        return current
    return await watch.until(current, lambda c: status_of(c) != baseline, wait_s)


def _check_cancellable(pid: str, status: Status, refusal: Refusal | None) -> None:
    if refusal is not None:  # this cancel's own refusal (the watch takes no other)
        raise _cannot_cancel(pid, refusal.status or status, refusal.reason)
    if status in _NOT_CANCELLABLE:
        raise _cannot_cancel(pid, status)


def _check_not_in_draw(svc: Services, current: PurchaseState) -> None:
    """A purchase waiting for its SKU's draw holds no stock yet: the writer would refuse its
    cancel, so the buyer is told to cancel once it is decided."""
    if not isinstance(current, Purchase):
        return
    sku = svc.hub.skus.get(current.sku)
    wait = draw_wait_of(sku, current.accepted_at_ms) if sku is not None else None
    if wait is not None:
        raise problems.Rejection(
            409, "cannot_cancel", "Cannot cancel",
            f"purchase {current.id} waits for its SKU's draw (decided at {wait.decides_at}); "
            "cancel it once it is decided",
        )


async def _publish_cancel(svc: Services, current: PurchaseState, pid: str) -> None:
    shard = shard_of(current.sku, svc.settings.shards)
    # Packed with the shard's other intents: nothing drops a cancel as a duplicate, so a cancel
    # sent for a later state (the reservation a refused cancel's entry then won) always arrives.
    # Requested twice is fine: cancelling is idempotent.
    await svc.batcher.store(shard, Cancel(id=pid))


def _cannot_cancel(pid: str, status: str, reason: str | None = None) -> problems.Rejection:
    detail = f"purchase {pid} is {status} and cannot be cancelled"
    if reason:
        detail += f" ({reason})"
    return problems.Rejection(409, "cannot_cancel", "Cannot cancel", detail)
