"""The buyer's routes: create a purchase, read it (long-poll), cancel it.

Each handler is a short list of steps; a step that refuses the request raises
`problems.Rejection` (answered by the admission middleware) or `Overloaded` (a 503).
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from ingest import bodies, prefer, problems
from ingest.auth import bearer_token, looks_like_jwt
from ingest.edge.clients import client_of
from ingest.errors import Overloaded
from ingest.ratelimit import RateLimiter
from ingest.readmodel import OPERATOR, Reader
from ingest.results import Awaits, PurchaseState, Watch, is_decided, is_final, status_of
from ingest.schemas import (
    PurchaseRequest,
    PurchaseView,
    draw_wait_of,
    purchase_request_decoder,
    view_of,
)
from ingest.state import STATE, Services, Submitting
from proto.clock import now_ms
from proto.identifiers import IDEMPOTENCY_KEY, PURCHASE_ID
from proto.ids import new_idempotency_key, purchase_id, request_hash
from proto.messages import (
    FINAL_STATUSES,
    STATUSES,
    Cancel,
    Decision,
    Purchase,
    Refusal,
    Status,
    encode,
)
from proto.sharding import shard_of

# Decided states that a cancel can no longer undo.
_NOT_CANCELLABLE: frozenset[Status] = frozenset({"confirmed", "rejected"})


async def create_purchase(request: web.Request) -> web.Response:
    svc = request.app[STATE]
    buyer = svc.buyers.buyer(request)
    req = await bodies.decode_body(request, purchase_request_decoder)
    _check_body_buyer(req, buyer)
    _check_qty(req.qty, svc.settings.qty_max)
    key = _idempotency_key(svc, request)
    _check_rate(svc, buyer)
    await _check_sku_exists(svc, req.sku, key, client_of(request))
    intent = _intent(svc, req, buyer, key)
    wait_s = prefer.capped_prefer_wait_s(request, svc.settings.wait_max_s)
    headers = {"Location": f"/v1/purchases/{intent.id}", "Idempotency-Key": key}
    watch = None
    if wait_s > 0:
        awaits = Awaits(kind="purchase", request_hash=intent.request_hash)
        watch = svc.hub.watch(intent.id, client=client_of(request), buyer=buyer, awaits=awaits)
    try:  # the watch (hub.watching) by hand: most purchases do not wait, and pay nothing for it
        current = await _submit(svc, intent, key)
        if watch is not None:
            current = await watch.until(current, is_decided, wait_s)
            headers["Preference-Applied"] = prefer.preference_applied(wait_s)
            if watch.refusal is not None:  # the key's purchase is another request's
                raise _key_reused(key)
    finally:
        if watch is not None:
            svc.hub.unwatch(watch)
    assert current.id == intent.id, "the purchase answered is the one the buyer and key name"
    if isinstance(current, Decision):
        # Decided while this request waited: for this body, or the key's first use elsewhere.
        _check_same_request(current.request_hash, intent.request_hash, key)
    status = 200 if watch is not None and status_of(current) != "pending" else 202
    return bodies.json_response(purchase_view(svc, current), status, headers)


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


def _check_body_buyer(req: PurchaseRequest, buyer: str) -> None:
    if req.user_id is not None and req.user_id != buyer:
        raise problems.Rejection(
            403, "forbidden", "Forbidden",
            "user_id in the body differs from the authenticated buyer (leave it out)",
        )


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


def _check_qty(qty: int, qty_max: int) -> None:
    if qty > qty_max:
        raise problems.validation(
            f"qty must be <= {qty_max}",
            [problems.FieldError("$.qty", f"Expected `int` <= {qty_max}")],
        )


def _check_rate(svc: Services, user_id: str) -> None:
    if svc.limiter is None:
        return
    wait_s = svc.limiter.acquire(user_id, time.monotonic())
    if wait_s:
        raise problems.Rejection(
            429, "rate_limited", "Too many requests",
            f"user {user_id!r} sends purchases faster than {svc.settings.user_rate_per_s:g}/s",
            retry_after_s=RateLimiter.retry_after_s(wait_s),
        )


async def _check_sku_exists(svc: Services, sku: str, key: str, client: str) -> None:
    # Every SKU reaches ingest on the result stream or from Postgres: a miss was never created.
    # Refused here, so junk SKUs never reach JetStream or a committer.
    if sku not in svc.hub.skus and await svc.reads.sku_state(sku, client) is None:
        raise problems.Rejection(
            422, "unknown_sku", "Unknown SKU", f"SKU {sku!r} does not exist",
            headers={"Idempotency-Key": key},
        )


def _intent(svc: Services, req: PurchaseRequest, buyer: str, key: str) -> Purchase:
    return Purchase(
        id=purchase_id(svc.id_key, buyer, key), sku=req.sku, qty=req.qty, user_id=buyer,
        request_hash=request_hash(encode((req.sku, req.qty, buyer, req.payment_token))),
        accepted_at_ms=now_ms(), payment_token=req.payment_token,
    )


async def _submit(svc: Services, intent: Purchase, key: str) -> PurchaseState:
    """Store the intent; or, for a key that already made a purchase, that purchase (same body).
    The key's first use, where this instance can see it (decided, stored by any instance and
    read here, stored here, in flight here), makes another body a 422 before anything is stored."""
    known = svc.hub.decision(intent.id)
    if known is not None:  # a retry of a decided purchase: nothing to store
        _check_same_request(known.request_hash, intent.request_hash, key)
        return known
    followed = svc.hub.queues.pending(intent.id, intent.request_hash)
    if followed is not None:  # a retry of a stored intent (on any instance): nothing to store
        return await _existing(svc, followed, intent, key)
    first = svc.hub.stored_here.get(intent.id) or svc.hub.queues.pending(intent.id)
    if first is not None:
        _check_same_request(first.request_hash, intent.request_hash, key)
    twin = svc.submitting.get(intent.id)
    if twin is not None:
        # The same key twice at once on this instance: another body is refused at once; the
        # same click waits for the first to store it (or fail), then is answered as a retry,
        # so that the two can never get different answers.
        _check_same_request(twin.request_hash, intent.request_hash, key)
        await asyncio.shield(twin.twin_waits())
        return await _store_or_find(svc, intent, key, retry=True)
    submitting = Submitting(intent.request_hash)
    svc.submitting[intent.id] = submitting
    try:
        return await _store_or_find(svc, intent, key, retry=False)
    finally:
        del svc.submitting[intent.id]
        submitting.finished()


async def _store_or_find(svc: Services, intent: Purchase, key: str, retry: bool) -> PurchaseState:
    shard = shard_of(intent.sku, svc.settings.shards)
    if retry:
        existing = await svc.reads.stored_intent(shard, intent.id, intent.request_hash)
        if existing is None:
            raise Overloaded("intent_missing")  # the first copy failed: the client retries
        return await _existing(svc, existing, intent, key)
    if svc.hub.is_sold_out(intent.sku):
        # Sold-out fast path, but a retry of an accepted purchase still gets that purchase:
        # pending (read here after a barrier), or decided. A decided one is asked of Postgres
        # only if the follower read its id or it may predate the follower (sold_out_purchase
        # says why that is exact): a new click is answered from memory.
        existing = await svc.reads.stored_intent(shard, intent.id, intent.request_hash)
        if existing is not None:
            return await _existing(svc, existing, intent, key)
        other = svc.hub.queues.pending(intent.id)
        if other is not None:  # the key's first use, with another body, is pending
            _check_same_request(other.request_hash, intent.request_hash, key)
        decided = await svc.reads.sold_out_purchase(intent.id, intent.sku)
        if decided is not None:
            _check_same_request(decided.request_hash, intent.request_hash, key)
            return decided
        raise problems.Rejection(
            409, "sold_out", "Sold out", f"SKU {intent.sku!r} is sold out; no purchase was created",
            headers={"Idempotency-Key": key},
        )
    svc.hub.queues.check_live(shard, time.monotonic())
    place = await svc.batcher.store(shard, intent)
    svc.hub.queues.accepted(shard)
    svc.hub.stored(intent)
    try:
        # Known as pending (with its place in the queue) once the follower has read it too.
        await svc.follower.reached(shard, place.seq)
    except Overloaded:
        pass  # stored all the same: answered without a queue position
    return svc.hub.decision(intent.id) or intent


async def _existing(svc: Services, existing: Purchase, intent: Purchase, key: str) -> PurchaseState:
    """The purchase a stored intent with the same id names, if it has the same body."""
    assert existing.id == intent.id, (existing.id, intent.id)
    _check_same_request(existing.request_hash, intent.request_hash, key)
    decided = svc.hub.decision(intent.id) or await svc.reads.purchase_from_db(intent.id)
    if decided is None:
        return existing
    assert decided.id == intent.id, (decided.id, intent.id)
    # This body's intent is stored, yet the key's purchase may be another body's: the same key
    # used with a SKU of another shard, decided there first (this intent was refused).
    _check_same_request(decided.request_hash, intent.request_hash, key)
    return decided


def _check_same_request(stored_hash: str, request_hash: str, key: str) -> None:
    assert request_hash, "this request's own hash is never empty (a stored one may be)"
    if stored_hash and stored_hash != request_hash:
        raise _key_reused(key)


def _key_reused(key: str) -> problems.Rejection:
    return problems.Rejection(
        422, "idempotency_key_reused", "Idempotency key reused",
        "idempotency key reused with a different request", headers={"Idempotency-Key": key},
    )


def purchase_id_in_path(svc: Services, request: web.Request) -> str:
    """The purchase id in the path; a name that cannot be one is a 404 like a missing purchase,
    charged as a miss (identifiers: proto.identifiers)."""
    pid = request.match_info["id"]
    if not PURCHASE_ID.matches(pid):
        svc.reads.charge(client_of(request))
        raise problems.not_found(f"no such purchase (a purchase id is {PURCHASE_ID.describe()})")
    return pid


def _idempotency_key(svc: Services, request: web.Request) -> str:
    """The client's Idempotency-Key, or a new server-issued one when the header is absent. Two
    of them name two purchases: which one was meant is not something to guess."""
    keys = request.headers.getall("Idempotency-Key", [])
    if not keys:
        return new_idempotency_key()
    key = keys[0]
    if len(keys) > 1 or not IDEMPOTENCY_KEY.matches(key):
        svc.reads.charge(client_of(request))
        raise problems.Rejection(
            400, "bad_idempotency_key", "Invalid Idempotency-Key",
            f"send one Idempotency-Key of {IDEMPOTENCY_KEY.describe()} (visible ASCII)",
        )
    return key


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
