"""Creating a purchase: the steps of `POST /v1/purchases`, from what the request carries
(`Post`) to its answer (`Created`).

Two doors lead here: aiohttp's route (`create_purchase`) and the lean path (`ingest.lean`),
which answers a plain request without aiohttp's request cycle. Both take the same steps and give
the same answers; a step that refuses the request raises `problems.Rejection` (or `Overloaded`,
a 503), answered as problem+json by whichever door the request came through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from aiohttp import web

from ingest import bodies, prefer, problems
from ingest.edge.clients import client_of
from ingest.edge.process import read_body
from ingest.errors import Overloaded
from ingest.purchases import purchase_view
from ingest.ratelimit import RateLimiter
from ingest.results import Awaits, PurchaseState, is_decided, status_of
from ingest.schemas import PurchaseRequest, PurchaseView, purchase_request_decoder
from ingest.state import STATE, Services, Submitting
from proto.clock import now_ms
from proto.identifiers import IDEMPOTENCY_KEY
from proto.ids import new_idempotency_key, purchase_id, request_hash
from proto.messages import Decision, Purchase, encode
from proto.sharding import shard_of


class Post(NamedTuple):
    """What a `POST /v1/purchases` carries: its headers' values (each header's values in the
    order sent; `prefer` the first), the client it came from, and its body (or how to read it,
    when it may still be on its way)."""

    authorization: list[str]
    idempotency_keys: list[str]
    prefer: str | None
    content_type: str
    client: str
    body: bytes | Callable[[], Awaitable[bytes]]


class Created(NamedTuple):
    """The answer to a purchase: 202 stored (pending), or 200 decided while it waited."""

    status: int
    view: PurchaseView
    headers: dict[str, str]


async def create_purchase(request: web.Request) -> web.Response:
    """aiohttp's route."""
    headers = request.headers
    post = Post(
        headers.getall("Authorization", []), headers.getall("Idempotency-Key", []),
        headers.get("Prefer"), request.content_type, client_of(request), lambda: read_body(request),
    )
    status, view, answer_headers = await create(request.app[STATE], post)
    return bodies.json_response(view, status, answer_headers)


async def create(svc: Services, post: Post) -> Created:
    buyer = svc.buyers.buyer_of(post.authorization)
    bodies.check_json(post.content_type)
    body = post.body if isinstance(post.body, bytes) else await post.body()
    req = bodies.decode_json(body, purchase_request_decoder)
    _check_body_buyer(req, buyer)
    _check_qty(req.qty, svc.settings.qty_max)
    key = _idempotency_key(svc, post.idempotency_keys, post.client)
    _check_rate(svc, buyer)
    await _check_sku_exists(svc, req.sku, key, post.client)
    intent = _intent(svc, req, buyer, key)
    wait_s = prefer.capped_wait_s(post.prefer, svc.settings.wait_max_s)
    headers = {"Location": f"/v1/purchases/{intent.id}", "Idempotency-Key": key}
    watch = None
    if wait_s > 0:
        awaits = Awaits(kind="purchase", request_hash=intent.request_hash)
        watch = svc.hub.watch(intent.id, client=post.client, buyer=buyer, awaits=awaits)
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
    return Created(status, purchase_view(svc, current), headers)


# -- steps ---------------------------------------------------------------------------------


def _check_body_buyer(req: PurchaseRequest, buyer: str) -> None:
    if req.user_id is not None and req.user_id != buyer:
        raise problems.Rejection(
            403, "forbidden", "Forbidden",
            "user_id in the body differs from the authenticated buyer (leave it out)",
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
    # Answered once stored and read back by this instance's follower: pending, in its place.
    await svc.batcher.store(shard, intent)
    svc.hub.queues.accepted(shard)
    svc.hub.stored(intent)
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


def _idempotency_key(svc: Services, keys: list[str], client: str) -> str:
    """The client's Idempotency-Key, or a new server-issued one when the header is absent. Two
    of them name two purchases: which one was meant is not something to guess."""
    if not keys:
        return new_idempotency_key()
    key = keys[0]
    if len(keys) > 1 or not IDEMPOTENCY_KEY.matches(key):
        svc.reads.charge(client)
        raise problems.Rejection(
            400, "bad_idempotency_key", "Invalid Idempotency-Key",
            f"send one Idempotency-Key of {IDEMPOTENCY_KEY.describe()} (visible ASCII)",
        )
    return key
