"""msgspec Structs for everything that crosses a process boundary.

Times are integer milliseconds since the Unix epoch (`*_ms`): cheap to encode, no time zones.
Intents flow ingest/gateway -> committer on the shard's intent subjects; a `ResultBatch` flows
committer -> everyone after the batch it describes is committed in Postgres.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

import msgspec

from proto.draw import DRAW_WINDOW_MAX_S

Status = Literal["pending", "reserved", "confirmed", "rejected", "expired", "cancelled"]
STATUSES: tuple[Status, ...] = get_args(Status)
FINAL_STATUSES: frozenset[Status] = frozenset({"confirmed", "rejected", "expired", "cancelled"})

# Rejection / closing reasons a buyer can see.
Reason = Literal[
    "sold_out",
    "limit_exceeded",
    "sale_not_open",
    "sale_ended",
    "unknown_sku",
    "payment_declined",
    "payment_failed",
    "buyer_cancelled",
    "ttl_passed",
    "already_in_draw",  # the buyer already has an entry in this SKU's draw
    "draw_full",  # the draw holds DRAW_ENTRIES_MAX entries (committer/draw.py)
]

Payment = Literal["none", "required"]


class Purchase(msgspec.Struct, tag="purchase", frozen=True):
    """A buyer pressed buy. `id` is derived from (user_id, idempotency key)."""

    id: str
    sku: str
    qty: int
    user_id: str
    request_hash: str
    accepted_at_ms: int
    payment_token: str | None = None


class Confirm(msgspec.Struct, tag="confirm", frozen=True):
    """The gateway captured the money for a reservation."""

    id: str
    psp_ref: str
    amount_cents: int


class Release(msgspec.Struct, tag="release", frozen=True):
    """The gateway gives a reservation's stock back (declined or failed payment)."""

    id: str
    reason: Literal["payment_declined", "payment_failed"]


class Cancel(msgspec.Struct, tag="cancel", frozen=True):
    """The buyer gives a reservation back."""

    id: str


CLEARABLE_SKU_FIELDS: frozenset[str] = frozenset({"max_per_user", "sale_start_ms", "sale_end_ms"})

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# Every reader of a sale time (ingest's RFC 3339 views, Python's datetime) handles years
# 1..9999 in UTC; a time outside would be stored fine and then fail every GET of the SKU.
TIME_MIN_MS = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // _MS
TIME_MAX_MS = (datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC) - _EPOCH) // _MS
COUNT_MAX = 2_000_000_000  # stock, caps, qty: below int4's 2**31 - 1 (committer/schema.sql)
# What each number of a SkuUpsert may be, both ends included: what its Postgres column holds
# (committer/schema.sql) and what every reader can show. Ingest's PUT, the CLI and sale files
# refuse anything outside (flashsale.sku_changes.make_upsert, the OpenAPI document states the same);
# the writer refuses an upsert that carries it anyway, so no change can fail its batch.
SKU_BOUNDS: dict[str, tuple[int, int]] = {
    "stock": (0, COUNT_MAX),
    "price_cents": (0, 10**15),
    "max_per_user": (1, COUNT_MAX),
    "reservation_ttl_s": (1, 7 * 24 * 3600),
    "sale_start_ms": (TIME_MIN_MS, TIME_MAX_MS),
    "sale_end_ms": (TIME_MIN_MS, TIME_MAX_MS),
    "draw_window_s": (0, DRAW_WINDOW_MAX_S),
}


class SkuUpsert(msgspec.Struct, tag="sku_upsert", frozen=True):
    """Operator creates or adjusts a SKU. Fields left as None keep their current value; fields
    named in `clear` (of CLEARABLE_SKU_FIELDS) are reset to none (no cap, no window bound)."""

    request_id: str
    sku: str
    stock: int
    price_cents: int | None = None
    max_per_user: int | None = None
    payment: Payment | None = None
    reservation_ttl_s: int | None = None
    sale_start_ms: int | None = None
    sale_end_ms: int | None = None
    clear: list[str] = []
    # 0: first come first served. Above 0: purchases clicked in the first draw_window_s seconds
    # from sale_start are decided by a draw (committer/draw.py).
    draw_window_s: int | None = None
    # A fresh random seed with every upsert; the writer keeps the first one a SKU gets, for good.
    draw_seed: str | None = None


def out_of_bounds(u: SkuUpsert) -> tuple[str, str] | None:
    """(field, why) for the first number of `u` outside SKU_BOUNDS, or None."""
    for name, (low, high) in SKU_BOUNDS.items():
        value = getattr(u, name)
        if value is not None and not low <= value <= high:
            return name, f"{name} must be in {low}..{high}"
    return None


Intent = Purchase | Confirm | Release | Cancel | SkuUpsert


class IntentBatch(msgspec.Struct, tag="batch", frozen=True):
    """The intents one ingest instance stored together for one shard: ONE JetStream message, so
    one disk flush and one server-side message however many buyers it holds. An intent's place
    in its shard's queue is (the message's stream sequence, its index here). Nothing here is
    unique per purchase any more: the committer decides each purchase id once (its memory, then
    Postgres), and ingest follows the stream to know which ids are pending."""

    intents: list[Intent]


# What an intents stream message holds: one intent on its own subject (the gateway's confirms
# and releases, operators' SKU changes), or a packed batch of them (ingest).
Stored = Intent | IntentBatch


def unpacked(stored: Stored) -> list[Intent]:
    return stored.intents if isinstance(stored, IntentBatch) else [stored]


class Decision(msgspec.Struct, frozen=True):
    """The committed state of one purchase."""

    id: str
    sku: str
    user_id: str
    qty: int
    status: Status
    reason: Reason | None
    amount_cents: int
    accepted_at_ms: int
    decided_at_ms: int
    updated_at_ms: int
    expires_at_ms: int | None = None
    request_hash: str = ""
    draw_rank: int | None = None  # 1-based place in its SKU's draw; None if not decided by one


class SkuState(msgspec.Struct, frozen=True):
    """Public availability of a SKU after a batch."""

    sku: str
    stock: int
    reserved: int
    sold: int
    price_cents: int
    max_per_user: int | None
    payment: Payment
    reservation_ttl_s: int
    sale_start_ms: int | None
    sale_end_ms: int | None
    draw_window_s: int = 0
    draw_commitment: str | None = None  # sha256 of the seed, public from the SKU's creation
    draw_seed: str | None = None  # revealed once drawn
    drawn_at_ms: int | None = None
    draw_entries: int = 0  # entries so far; after the draw, all of them

    @property
    def remaining(self) -> int:
        return self.stock - self.reserved - self.sold

    @property
    def sold_out(self) -> bool:
        # Nothing reserved either: a reservation that expires or is cancelled gives stock back.
        return self.remaining <= 0 and self.reserved == 0


RefusalKind = Literal["purchase", "confirm", "release", "cancel", "sku_upsert"]


# The Refusal reason of a purchase whose id (its Idempotency-Key) was decided for another request.
KEY_REUSED = "idempotency_key_reused"


class Refusal(msgspec.Struct, frozen=True):
    """An intent the committer could not apply: a confirm after expiry, a cancel of a confirmed
    purchase, an admin change that would oversell, a purchase or admin change for a SKU of
    another shard, a purchase whose id was decided for another request (KEY_REUSED). The sender
    decides what to do (refund, 409, 422); only the waiters of that very intent are answered by
    it (same kind, and for a purchase the same request hash)."""

    kind: RefusalKind
    key: str  # purchase id, or the admin request id
    reason: str
    status: Status | None = None  # the purchase's state when refused
    request_hash: str = ""  # a refused purchase: the hash of the request refused (not the purchase's)


class PaymentJob(msgspec.Struct, frozen=True):
    """A reservation the gateway must charge for (or release)."""

    id: str
    sku: str
    user_id: str
    amount_cents: int
    payment_token: str | None
    expires_at_ms: int
    shard: int


class ResultBatch(msgspec.Struct, frozen=True):
    """Everything one committed batch changed, for long-polls, caches and the gateway."""

    shard: int
    epoch: int
    decisions: list[Decision] = []
    skus: list[SkuState] = []
    refusals: list[Refusal] = []
    admin_applied: list[str] = []  # request ids of SkuUpserts applied in this batch
    # The committer's progress: the highest INTENTS stream sequence it has decided (and acked).
    # Also sent in the empty heartbeat batches of an idle writer, about every second.
    decided_seq: int = 0


class Progress(msgspec.Struct, frozen=True):
    """A writer took its shard's intents up to `taken_seq` (its intents stream's sequence) into
    the batch it is deciding now. Sent on core NATS before the batch commits."""

    shard: int
    epoch: int
    taken_seq: int


# Reusable encoders/decoders: constructing them per message costs more than using them.
encode = msgspec.msgpack.Encoder().encode
intent_decoder = msgspec.msgpack.Decoder(Intent)
stored_decoder = msgspec.msgpack.Decoder(Stored)
result_decoder = msgspec.msgpack.Decoder(ResultBatch)
progress_decoder = msgspec.msgpack.Decoder(Progress)
payment_decoder = msgspec.msgpack.Decoder(PaymentJob)
