"""HTTP request and response bodies of the v1 API (msgspec Structs, strict decoding).

Times on the HTTP API are ISO 8601 / RFC 3339 strings in UTC with millisecond precision
("2026-11-24T13:51:34.123Z"); inside the system they are epoch milliseconds (proto/).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from flashsale.admin import TIME_MAX_MS, TIME_MIN_MS
from ingest.queue import QueueView
from proto.identifiers import PAYMENT_TOKEN, SKU, USER_ID
from proto.messages import Decision, Purchase, SkuState

# The identifiers' grammar is proto.identifiers'. User ids are visible ASCII without spaces: ids
# from any identity provider (uuid, email, numeric) fit.
Sku = Annotated[str, SKU.meta()]
UserId = Annotated[str, USER_ID.meta()]
PaymentToken = Annotated[str, PAYMENT_TOKEN.meta()]
# Postgres columns are int4; the cap of qty is a runtime setting checked by the handler.
Qty = Annotated[int, Meta(ge=1, le=2_000_000_000)]
Stock = Annotated[int, Meta(ge=0, le=2_000_000_000)]

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

    stock: Stock
    price_cents: Annotated[int, Meta(ge=0, le=10**15)] | msgspec.UnsetType = msgspec.UNSET
    max_per_user: Annotated[int, Meta(ge=1, le=2000000000)] | msgspec.UnsetType | None = msgspec.UNSET
    payment: Literal["none", "required"] | msgspec.UnsetType = msgspec.UNSET
    reservation_ttl_s: Annotated[int, Meta(ge=1, le=7 * 24 * 3600)] | msgspec.UnsetType = msgspec.UNSET
    sale_start: datetime | msgspec.UnsetType | None = msgspec.UNSET  # naive = UTC
    sale_end: datetime | msgspec.UnsetType | None = msgspec.UNSET


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
    queue: QueueView | None = None  # while pending: its place in the shard's queue


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


def view_of(item: Decision | Purchase, queue: QueueView | None = None) -> PurchaseView:
    if isinstance(item, Purchase):
        return PurchaseView(
            id=item.id, status="pending", reason=None, sku=item.sku, qty=item.qty,
            user_id=item.user_id, amount_cents=None, accepted_at=iso_ms(item.accepted_at_ms),
            decided_at=None, updated_at=None, expires_at=None, queue=queue,
        )
    return PurchaseView(
        id=item.id, status=item.status, reason=item.reason, sku=item.sku, qty=item.qty,
        user_id=item.user_id, amount_cents=item.amount_cents,
        accepted_at=iso_ms(item.accepted_at_ms), decided_at=iso_ms(item.decided_at_ms),
        updated_at=iso_ms(item.updated_at_ms), expires_at=iso_ms(item.expires_at_ms),
    )


def sku_view_of(s: SkuState) -> SkuView:
    remaining = s.remaining
    return SkuView(
        sku=s.sku, remaining=remaining, stock=s.stock, reserved=s.reserved, sold=s.sold,
        sold_out=remaining <= 0 and s.reserved == 0, price_cents=s.price_cents,
        max_per_user=s.max_per_user, payment=s.payment, reservation_ttl_s=s.reservation_ttl_s,
        sale_start=iso_ms(s.sale_start_ms), sale_end=iso_ms(s.sale_end_ms),
    )


class SkuList(msgspec.Struct):
    skus: list[SkuView]
    next_after: str | None  # pass as ?after= for the next page; null on the last page
