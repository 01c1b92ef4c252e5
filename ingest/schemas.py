"""HTTP request and response bodies of the v1 API (msgspec Structs, strict decoding).

Times on the HTTP API are ISO 8601 / RFC 3339 strings in UTC with millisecond precision
("2026-11-24T13:51:34.123Z"); inside the system they are epoch milliseconds (proto/).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from ingest.queue import QueueView
from proto.clock import now_ms
from proto.draw import DRAW_GRACE_MS
from proto.identifiers import PAYMENT_TOKEN, SKU, USER_ID
from proto.messages import COUNT_MAX, SKU_BOUNDS, TIME_MAX_MS, TIME_MIN_MS, Decision, Purchase, SkuState

# The identifiers' grammar is proto.identifiers'. User ids are visible ASCII without spaces: ids
# from any identity provider (uuid, email, numeric) fit.
Sku = Annotated[str, SKU.meta()]
UserId = Annotated[str, USER_ID.meta()]
PaymentToken = Annotated[str, PAYMENT_TOKEN.meta()]
# Postgres columns are int4; the cap of qty is a runtime setting checked by the handler.
Qty = Annotated[int, Meta(ge=1, le=COUNT_MAX)]


def _bounded(name: str) -> Meta:
    """A SKU number's bounds (proto.messages.SKU_BOUNDS) as a msgspec constraint."""
    low, high = SKU_BOUNDS[name]
    return Meta(ge=low, le=high)

STATUSES = ("pending", "reserved", "confirmed", "rejected", "expired", "cancelled")


class PurchaseRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    sku: Sku
    qty: Qty
    # Never trusted: the buyer is the token's subject. Accepted only when equal to it.
    user_id: UserId | None = None
    payment_token: PaymentToken | None = None


class SkuUpsertRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Absent fields keep their value; an explicit null clears max_per_user, sale_start or
    sale_end (and is refused for the others, which have no 'none')."""

    stock: Annotated[int, _bounded("stock")]
    price_cents: Annotated[int, _bounded("price_cents")] | msgspec.UnsetType = msgspec.UNSET
    max_per_user: Annotated[int, _bounded("max_per_user")] | msgspec.UnsetType | None = msgspec.UNSET
    payment: Literal["none", "required"] | msgspec.UnsetType = msgspec.UNSET
    reservation_ttl_s: Annotated[int, _bounded("reservation_ttl_s")] | msgspec.UnsetType = msgspec.UNSET
    sale_start: datetime | msgspec.UnsetType | None = msgspec.UNSET  # naive = UTC
    sale_end: datetime | msgspec.UnsetType | None = msgspec.UNSET
    draw_window_s: Annotated[int, _bounded("draw_window_s")] | msgspec.UnsetType = msgspec.UNSET


DrawState = Literal["scheduled", "open", "closed", "drawn"]


class DrawView(msgspec.Struct):
    """A SKU's draw (docs/architecture.md, "Fair drops"): the commitment to its seed before,
    the seed itself after."""

    window_s: int
    closes_at: str | None  # purchases clicked before this enter the draw
    decides_at: str | None  # the earliest time the writer decides it
    state: DrawState  # scheduled: before sale_start; open: in the window; closed: not drawn yet
    commitment: str | None  # hex sha256 of the seed
    seed: str | None  # hex, revealed once drawn
    entries: int
    drawn_at: str | None
    verify: str  # the public list of entries and ranks


class DrawWait(msgspec.Struct):
    closes_at: str | None
    decides_at: str | None


class DrawQueue(msgspec.Struct):
    """A pending purchase's `queue` while it waits for its SKU's draw: no position until then."""

    draw: DrawWait


class DrawTicket(msgspec.Struct):
    """Where a purchase decided by a draw came: number `rank` of `entries`."""

    rank: int
    entries: int
    verify: str


class PurchaseView(msgspec.Struct):
    id: str
    status: str
    reason: str | None
    sku: str
    qty: int
    user_id: str
    amount_cents: int | None  # null while pending: the price is the committer's, never the client's
    accepted_at: str | None
    decided_at: str | None
    updated_at: str | None
    expires_at: str | None  # deadline of a reservation
    queue: QueueView | DrawQueue | None = None  # while pending: its place in the shard's queue
    draw: DrawTicket | None = None  # decided by a draw: its rank there


class SkuView(msgspec.Struct):
    sku: str
    remaining: int
    stock: int
    reserved: int
    sold: int
    sold_out: bool
    price_cents: int
    max_per_user: int | None
    payment: str
    reservation_ttl_s: int
    sale_start: str | None
    sale_end: str | None
    draw: DrawView | None  # null: first come first served from sale_start


purchase_request_decoder = msgspec.json.Decoder(PurchaseRequest)
sku_upsert_decoder = msgspec.json.Decoder(SkuUpsertRequest)
encode_json = msgspec.json.Encoder().encode


_second_prefix: tuple[int, str] = (-1, "")


def iso_ms(epoch_ms: int | None) -> str | None:
    """RFC 3339 UTC with milliseconds. The formatted second is cached: during a flood nearly
    every timestamp falls in the second before, and strftime is the expensive part."""
    global _second_prefix
    if epoch_ms is None:
        return None
    # Never fail on a stored value: clamp to the years RFC 3339 can write (a row written before
    # sale times were bounded, say).
    second, ms = divmod(min(max(epoch_ms, TIME_MIN_MS), TIME_MAX_MS), 1000)
    if _second_prefix[0] != second:
        dt = datetime.fromtimestamp(second, tz=UTC)
        # %Y does not pad years below 1000 on every platform: pad it here.
        _second_prefix = (second, f"{dt.year:04d}" + dt.strftime("-%m-%dT%H:%M:%S."))
    return f"{_second_prefix[1]}{ms:03d}Z"


def view_of(
    item: Decision | Purchase, queue: QueueView | None = None, sku: SkuState | None = None
) -> PurchaseView:
    """`sku`: the purchase's SKU as last seen, for the draw it waits for or was decided by."""
    if isinstance(item, Purchase):
        wait = draw_wait_of(sku, item.accepted_at_ms) if sku is not None else None
        return PurchaseView(
            id=item.id, status="pending", reason=None, sku=item.sku, qty=item.qty,
            user_id=item.user_id, amount_cents=None, accepted_at=iso_ms(item.accepted_at_ms),
            decided_at=None, updated_at=None, expires_at=None,
            queue=DrawQueue(draw=wait) if wait is not None else queue,
        )
    ticket = None
    if item.draw_rank is not None:
        entries = sku.draw_entries if sku is not None and sku.drawn_at_ms is not None else 0
        ticket = DrawTicket(rank=item.draw_rank, entries=max(entries, item.draw_rank),
                            verify=draw_path(item.sku))
    return PurchaseView(
        id=item.id, status=item.status, reason=item.reason, sku=item.sku, qty=item.qty,
        user_id=item.user_id, amount_cents=item.amount_cents,
        accepted_at=iso_ms(item.accepted_at_ms), decided_at=iso_ms(item.decided_at_ms),
        updated_at=iso_ms(item.updated_at_ms), expires_at=iso_ms(item.expires_at_ms), draw=ticket,
    )


def draw_path(sku: str) -> str:
    return f"/v1/skus/{sku}/draw"


def _draw_times(s: SkuState) -> tuple[int, int] | None:
    """(closes_at_ms, decides_at_ms) of a SKU with a draw window."""
    if s.draw_window_s <= 0 or s.sale_start_ms is None:
        return None
    closes = s.sale_start_ms + s.draw_window_s * 1000
    return closes, closes + DRAW_GRACE_MS


def draw_wait_of(s: SkuState, clicked_at_ms: int) -> DrawWait | None:
    """What a purchase clicked then waits for: its SKU's draw (committer/draw.py decides the
    same from the same stamp), or None."""
    times = _draw_times(s)
    if times is None or s.drawn_at_ms is not None or s.sale_start_ms is None:
        return None
    if clicked_at_ms < s.sale_start_ms:
        return None
    return DrawWait(closes_at=iso_ms(times[0]), decides_at=iso_ms(times[1]))


def draw_view_of(s: SkuState, at_ms: int) -> DrawView | None:
    times = _draw_times(s)
    if times is None:
        return None
    assert s.sale_start_ms is not None
    state: DrawState
    if s.drawn_at_ms is not None:
        state = "drawn"
    elif at_ms < s.sale_start_ms:
        state = "scheduled"
    elif at_ms < times[0]:
        state = "open"
    else:
        state = "closed"
    return DrawView(
        window_s=s.draw_window_s, closes_at=iso_ms(times[0]), decides_at=iso_ms(times[1]),
        state=state, commitment=s.draw_commitment, seed=s.draw_seed, entries=s.draw_entries,
        drawn_at=iso_ms(s.drawn_at_ms), verify=draw_path(s.sku),
    )


def sku_view_of(s: SkuState) -> SkuView:
    remaining = s.remaining
    return SkuView(
        sku=s.sku, remaining=remaining, stock=s.stock, reserved=s.reserved, sold=s.sold,
        sold_out=remaining <= 0 and s.reserved == 0, price_cents=s.price_cents,
        max_per_user=s.max_per_user, payment=s.payment, reservation_ttl_s=s.reservation_ttl_s,
        sale_start=iso_ms(s.sale_start_ms), sale_end=iso_ms(s.sale_end_ms),
        draw=draw_view_of(s, now_ms()),
    )


class DrawEntry(msgspec.Struct):
    id: str  # a purchase id: keyed by the server, it names no buyer
    rank: int


class DrawList(msgspec.Struct):
    """A drawn SKU's entries by rank, a page at a time (empty before the draw): with the seed in
    `draw`, anyone recomputes the order (`flashsale verify-draw`)."""

    sku: str
    draw: DrawView
    entries: list[DrawEntry]
    next_after: int | None  # pass as ?after= for the next page; null on the last page


class SkuList(msgspec.Struct):
    skus: list[SkuView]
    next_after: str | None  # pass as ?after= for the next page; null on the last page
