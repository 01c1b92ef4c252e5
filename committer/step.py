"""What the committer's machine decides about and hands out: a SKU's in-memory row, and the
Step that one batch of intents changed. Pure data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from committer.draw import Entry
from proto.draw import commitment_of
from proto.messages import Decision, Payment, PaymentJob, Refusal, SkuState

DEFAULT_RESERVATION_TTL_S = 600


class InvariantViolation(AssertionError):
    """The machine was about to break a money invariant. Fail loudly: never commit this."""


@dataclass
class Sku:
    sku: str
    stock: int
    price_cents: int = 0
    max_per_user: int | None = None
    payment: Payment = "none"
    reservation_ttl_s: int = DEFAULT_RESERVATION_TTL_S
    sale_start_ms: int | None = None
    sale_end_ms: int | None = None
    reserved: int = 0
    sold: int = 0
    draw_window_s: int = 0  # committer/draw.py
    draw_seed: str | None = None
    drawn_at_ms: int | None = None
    draw_entries: int = 0

    @property
    def remaining(self) -> int:
        return self.stock - self.reserved - self.sold

    def state(self) -> SkuState:
        return SkuState(
            sku=self.sku, stock=self.stock, reserved=self.reserved, sold=self.sold,
            price_cents=self.price_cents, max_per_user=self.max_per_user, payment=self.payment,
            reservation_ttl_s=self.reservation_ttl_s, sale_start_ms=self.sale_start_ms,
            sale_end_ms=self.sale_end_ms, draw_window_s=self.draw_window_s,
            draw_commitment=commitment_of(self.draw_seed) if self.draw_seed else None,
            draw_seed=self.draw_seed if self.drawn_at_ms is not None else None,
            drawn_at_ms=self.drawn_at_ms, draw_entries=self.draw_entries,
        )

    def check(self) -> None:
        """Never oversold, never negative."""
        if self.reserved < 0 or self.sold < 0 or self.reserved + self.sold > self.stock:
            raise InvariantViolation(
                f"{self.sku}: reserved {self.reserved} + sold {self.sold} vs stock {self.stock}"
            )


@dataclass
class Step:
    """What one batch of intents changed. Written atomically, then published."""

    inserts: list[Decision] = field(default_factory=list)  # new purchases
    updates: dict[str, Decision] = field(default_factory=dict)  # reserved -> final, by id
    skus: dict[str, Sku] = field(default_factory=dict)  # SKUs whose row must be written
    results: list[Decision] = field(default_factory=list)  # every decision to announce
    refusals: list[Refusal] = field(default_factory=list)
    payments: list[PaymentJob] = field(default_factory=list)
    admin_applied: list[str] = field(default_factory=list)
    psp_refs: dict[str, str] = field(default_factory=dict)  # confirmed id -> PSP reference
    draw_entries: list[Entry] = field(default_factory=list)  # purchases now waiting for a draw
    drawn: list[str] = field(default_factory=list)  # SKUs whose draw this step decided
    foreign_skus: list[str] = field(default_factory=list)  # of intents refused as WRONG_SHARD

    @property
    def has_writes(self) -> bool:
        return bool(self.inserts or self.updates or self.skus or self.draw_entries)
