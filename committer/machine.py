"""The committer's decision logic: a pure, single-threaded state machine (sans I/O).

Feed it intents and the clock; it returns a `Step`: the rows to write, the results to publish
and the payment jobs to hand to the gateway. It owns the stock of its shard's SKUs, so it decides
without locks; the I/O shell (`committer/writer.py`) commits each Step in one Postgres transaction
before anything it describes becomes visible.

It decides only its own shard's SKUs (`shard_of` under the system's shard map): a purchase or SKU
change for another shard's SKU is refused without touching any state, so a misrouted intent can
never create or overwrite a SKU another writer owns.

It must never oversell, never decide one purchase id twice and never break a per-user cap; those
are asserted here (a violation would cost money) and tested exhaustively in tests/unit/.

A purchase id is one buyer's Idempotency-Key, and a key reused with a SKU of another shard sends
a second purchase intent with that id to another writer. Whichever writer commits the id first
decides it; the other learns it from Postgres (`found_in_postgres`: before deciding, or when its
batch insert meets the row), takes back the step it decided (`undo`) and decides the batch
again, refusing that intent: no stock moves, its waiters are told. No request can stop a writer.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import msgspec

from committer.draw import (
    Draw,
    Entry,
    closes_at_ms,
    decides_at_ms,
    upsert_refusal,
    waits_for_draw,
)
from proto.draw import commitment_of, draw_order
from proto.messages import (
    CLEARABLE_SKU_FIELDS,
    KEY_REUSED,
    Cancel,
    Confirm,
    Decision,
    Intent,
    Payment,
    PaymentJob,
    Purchase,
    Reason,
    Refusal,
    RefusalKind,
    Release,
    SkuState,
    SkuUpsert,
    Status,
    out_of_bounds,
)
from proto.sharding import shard_of

DEFAULT_RESERVATION_TTL_S = 600

_K = TypeVar("_K")
_V = TypeVar("_V")

# The intents that close a reservation before it is paid (the Refusal kinds they can earn).
CloseKind = Literal["release", "cancel"]
# The Refusal reason of a purchase or SKU change whose SKU another shard owns.
WRONG_SHARD = "wrong_shard"


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


@dataclass
class _Journal:
    """What one step changed in the machine, as it was before (None: absent), so that a step
    whose batch is not committed can be taken back (`Machine.undo`)."""

    skus: dict[str, Sku | None] = field(default_factory=dict)
    decisions: dict[str, Decision | None] = field(default_factory=dict)
    reserved: dict[str, Decision | None] = field(default_factory=dict)
    user_qty: dict[tuple[str, str], int | None] = field(default_factory=dict)
    expired: list[tuple[int, str]] = field(default_factory=list)  # expiry heap entries popped
    draws: dict[str, Draw | None] = field(default_factory=dict)  # by SKU: taken or put in
    # Entries taken into a draw, in order: (the draw, the entry, whether its buyer was added).
    entered: list[tuple[Draw, Entry, bool]] = field(default_factory=list)
    forgot_any: bool = False


class Machine:
    def __init__(self, shard: int, shards: int = 1, seen_max: int = 2_000_000) -> None:
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} outside 0..{shards - 1}")
        self.shard = shard
        self.shards = shards
        self.seen_max = seen_max
        self.skus: dict[str, Sku] = {}
        # Every decision this shard remembers, oldest first; final ones may be evicted.
        self.decisions: OrderedDict[str, Decision] = OrderedDict()
        self.reserved: dict[str, Decision] = {}  # never evicted: they still hold stock
        self.user_qty: dict[tuple[str, str], int] = {}  # (sku, user) -> qty reserved+confirmed
        self._expiry_heap: list[tuple[int, str]] = []
        self.forgot_any = False  # once true, unknown ids must be checked against Postgres
        self.draws: dict[str, Draw] = {}  # SKUs whose draw is not decided yet
        # What Postgres holds of ids this machine does not: another shard's decisions or draw
        # entries (a key reused with another SKU; an entry is its Purchase, still pending), or
        # its own forgotten final decisions. A purchase intent with one of these ids is answered
        # from it, never decided; nothing here holds stock.
        self.stored: OrderedDict[str, Decision | Purchase] = OrderedDict()
        self._journal: _Journal | None = None  # the last step's, until the next one or undo

    def owns(self, sku: str) -> bool:
        return shard_of(sku, self.shards) == self.shard

    # -- rebuilding from Postgres -------------------------------------------------------------

    def load_sku(self, sku: Sku) -> None:
        self.skus[sku.sku] = sku
        self._track_draw(sku)

    def load_draw_entry(self, entry: Entry) -> None:
        """Restore an entry of an undecided draw (its SKU loaded first)."""
        self.draws[entry.purchase.sku].add(entry)

    def load_decision(self, d: Decision) -> None:
        """Restore one committed decision (startup, or an id the shell looked up).

        Per-user quantities are not derived here: they are loaded whole (`user_qty`), since
        the decisions kept in memory may be only the most recent ones."""
        if d.id in self.decisions:
            return
        self.decisions[d.id] = d
        if d.status == "reserved":
            self.reserved[d.id] = d
            assert d.expires_at_ms is not None
            heapq.heappush(self._expiry_heap, (d.expires_at_ms, d.id))

    def unknown_ids(self, intents: list[Intent]) -> list[str]:
        """Purchase ids this machine cannot vouch for, once it has forgotten some: ask Postgres
        before deciding them. Another shard's ids are not asked for (that would cost every
        batch a query): the batch's insert meets such an id, and the batch is decided again
        (`undo`, `found_in_postgres`), which costs nothing while no key is reused."""
        if not self.forgot_any:
            return []
        return [
            i.id for i in intents
            if isinstance(i, Purchase) and i.id not in self.decisions and i.id not in self.stored
        ]

    def found_in_postgres(self, rows: Sequence[Decision | Purchase]) -> None:
        """What Postgres holds of ids this machine does not (another shard's decisions and draw
        entries, its own forgotten decisions): purchase intents with these ids are answered from
        them from now on."""
        for d in rows:
            if d.id in self.decisions or self._entry_of(d.id) is not None:
                continue  # its own: decided, or waiting in one of its draws
            self.stored[d.id] = d
            self.stored.move_to_end(d.id)
        # Forgetting one costs a second look in Postgres, never a second decision; the rows
        # just given are kept whatever their number (the batch being decided needs them).
        while len(self.stored) > max(self.seen_max, len(rows)):
            self.stored.popitem(last=False)

    # -- deciding -----------------------------------------------------------------------------

    def step(self, intents: list[Intent], now_ms: int, draws_held: bool = False) -> Step:
        """Decide a batch. `draws_held`: the shell is not sure it holds every entry yet (intents
        taken by an earlier holder of the shard may still be redelivered): no draw is decided."""
        step = Step()
        self._journal = _Journal(forgot_any=self.forgot_any)
        self._expire(now_ms, step)
        for intent in intents:
            if isinstance(intent, Purchase):
                self._purchase(intent, now_ms, step)
            elif isinstance(intent, Confirm):
                self._confirm(intent, now_ms, step)
            elif isinstance(intent, Release):
                self._close(intent.id, "release", intent.reason, now_ms, step)
            elif isinstance(intent, Cancel):
                self._close(intent.id, "cancel", "buyer_cancelled", now_ms, step)
            elif isinstance(intent, SkuUpsert):
                self._upsert(intent, now_ms, step)
            else:  # pragma: no cover - the decoder only yields the Intent union
                raise TypeError(f"unknown intent {intent!r}")
        if not draws_held:
            self._decide_draws(now_ms, step)
        self._evict()
        return step

    def undo(self) -> None:
        """Take back the last step, whose batch was not committed: the machine is as it was
        before that step (the order of its memory aside), and may decide the batch again."""
        j = self._journal
        if j is None:
            raise RuntimeError("undo without a step to take back")
        self._journal = None
        for name, sku in j.skus.items():
            if sku is None:
                del self.skus[name]
            else:
                self.skus[name] = sku
        _restore(self.decisions, j.decisions)
        _restore(self.reserved, j.reserved)
        _restore(self.user_qty, j.user_qty)
        for entry in j.expired:
            heapq.heappush(self._expiry_heap, entry)
        _restore(self.draws, j.draws)
        for draw, e, buyer_added in reversed(j.entered):
            del draw.entries[e.purchase.id]
            draw.arrivals = e.arrival
            if buyer_added:
                draw.buyers.discard(e.purchase.user_id)
        self.forgot_any = j.forgot_any

    def next_expiry_ms(self) -> int | None:
        while self._expiry_heap and not self._is_due_entry(*self._expiry_heap[0]):
            heapq.heappop(self._expiry_heap)
        return self._expiry_heap[0][0] if self._expiry_heap else None

    def _is_due_entry(self, expires_at_ms: int, pid: str) -> bool:
        """A heap entry that still stands for a live reservation (entries are left behind by
        reservations closed early, and by steps taken back)."""
        d = self.reserved.get(pid)
        return d is not None and d.expires_at_ms == expires_at_ms

    def next_draw_ms(self) -> int | None:
        """When the next undecided draw is due (the shell wakes up for it)."""
        due = [t for name in self.draws if (t := decides_at_ms(self.skus[name])) is not None]
        return min(due, default=None)

    def _purchase(
        self, p: Purchase, now_ms: int, step: Step, draw_rank: int | None = None
    ) -> None:
        known = self.decisions.get(p.id) or self.stored.get(p.id) or self._entry_of(p.id)
        if known is not None:
            if known.request_hash and known.request_hash != p.request_hash:
                # The key was used for another request (another SKU, qty or card), and that one
                # is the purchase: this intent is refused, whatever shard decided the other.
                status = known.status if isinstance(known, Decision) else "pending"
                step.refusals.append(
                    Refusal(kind="purchase", key=p.id, reason=KEY_REUSED, status=status,
                            request_hash=p.request_hash)
                )
                return
            if isinstance(known, Decision):
                # A retry, a redelivery or a replay: announce the one decision again, change
                # nothing.
                step.results.append(known)
                return
            return  # a retry of a purchase waiting in a draw: still pending
        if not self.owns(p.sku):
            # Not decided here, not remembered: the owner may still decide this id.
            self._refuse_foreign("purchase", p.id, p.sku, step)
            return
        sku = self.skus.get(p.sku)
        # The buyer's click time, as stamped by ingest, decides the sale window; never the future.
        at_ms = min(p.accepted_at_ms, now_ms)
        reason: Reason | None = None
        if sku is None:
            reason = "unknown_sku"
        elif sku.sale_start_ms is not None and at_ms < sku.sale_start_ms:
            reason = "sale_not_open"
        elif sku.sale_end_ms is not None and at_ms >= sku.sale_end_ms:
            reason = "sale_ended"
        elif waits_for_draw(sku, at_ms):
            reason = self._enter_draw(p, sku, at_ms, step)
            if reason is None:
                return  # pending until the draw
        elif sku.remaining < p.qty:
            reason = "sold_out"
        elif (
            sku.max_per_user is not None
            and self.user_qty.get((p.sku, p.user_id), 0) + p.qty > sku.max_per_user
        ):
            reason = "limit_exceeded"

        if reason is not None:
            d = Decision(
                id=p.id, sku=p.sku, user_id=p.user_id, qty=p.qty, status="rejected",
                reason=reason, amount_cents=0, accepted_at_ms=p.accepted_at_ms,
                decided_at_ms=now_ms, updated_at_ms=now_ms, request_hash=p.request_hash,
                draw_rank=draw_rank,
            )
        else:
            assert sku is not None
            amount = sku.price_cents * p.qty
            self._add_user_qty((p.sku, p.user_id), p.qty)
            self._save_sku(sku.sku)
            if sku.payment == "required":
                sku.reserved += p.qty
                expires = now_ms + sku.reservation_ttl_s * 1000
                d = Decision(
                    id=p.id, sku=p.sku, user_id=p.user_id, qty=p.qty, status="reserved",
                    reason=None, amount_cents=amount, accepted_at_ms=p.accepted_at_ms,
                    decided_at_ms=now_ms, updated_at_ms=now_ms, expires_at_ms=expires,
                    request_hash=p.request_hash, draw_rank=draw_rank,
                )
                self._set_reserved(p.id, d)
                heapq.heappush(self._expiry_heap, (expires, p.id))
                step.payments.append(
                    PaymentJob(
                        id=p.id, sku=p.sku, user_id=p.user_id, amount_cents=amount,
                        payment_token=p.payment_token, expires_at_ms=expires, shard=self.shard,
                    )
                )
            else:
                sku.sold += p.qty
                d = Decision(
                    id=p.id, sku=p.sku, user_id=p.user_id, qty=p.qty, status="confirmed",
                    reason=None, amount_cents=amount, accepted_at_ms=p.accepted_at_ms,
                    decided_at_ms=now_ms, updated_at_ms=now_ms, request_hash=p.request_hash,
                    draw_rank=draw_rank,
                )
            self._check_sku(sku)
            self._check_cap(sku, p.user_id)
            step.skus[sku.sku] = sku
        self._remember(d)
        step.inserts.append(d)
        step.results.append(d)

    # -- the draw (committer/draw.py) ----------------------------------------------------------

    def _enter_draw(self, p: Purchase, sku: Sku, clicked_at_ms: int, step: Step) -> Reason | None:
        """Take a purchase into its SKU's draw (None), or the reason it is rejected at once."""
        draw = self.draws[sku.sku]  # a retry of an entry is pending already (_purchase)
        closes = closes_at_ms(sku)
        assert closes is not None
        buyers = len(draw.buyers)
        entry = draw.take(p, clicked_at_ms, ranked=clicked_at_ms < closes)
        if not isinstance(entry, Entry):
            return entry
        if self._journal is not None:
            self._journal.entered.append((draw, entry, len(draw.buyers) > buyers))
        if entry.ranked:
            self._save_sku(sku.sku)
            sku.draw_entries += 1
        step.draw_entries.append(entry)
        step.skus[sku.sku] = sku
        return None

    def _decide_draws(self, now_ms: int, step: Step) -> None:
        for name in list(self.draws):
            sku = self.skus[name]
            due = decides_at_ms(sku)
            if due is not None and now_ms >= due:
                self._decide_draw(sku, self._set_draw(name, None), now_ms, step)

    def _decide_draw(self, sku: Sku, draw: Draw, now_ms: int, step: Step) -> None:
        """Every entry in the draw's order, then the purchases that waited, first come first
        served; all with the ordinary rules. Drawn first, so none of them enters a draw again."""
        assert sku.draw_seed is not None  # upsert_refusal: no window without a seed
        self._save_sku(sku.sku)
        sku.drawn_at_ms = now_ms
        order = draw_order(sku.draw_seed, draw.ranked_ids())
        sku.draw_entries = len(order)
        for rank, pid in enumerate(order, start=1):
            self._purchase(draw.entries[pid].purchase, now_ms, step, draw_rank=rank)
        for entry in draw.waiting():
            self._purchase(entry.purchase, now_ms, step)
        step.drawn.append(sku.sku)
        step.skus[sku.sku] = sku

    def _entry_of(self, pid: str) -> Purchase | None:
        """The purchase waiting under this id in any of this machine's draws."""
        for draw in self.draws.values():
            entry = draw.entries.get(pid)
            if entry is not None:
                return entry.purchase
        return None

    def _track_draw(self, sku: Sku) -> None:
        if sku.draw_window_s > 0 and sku.drawn_at_ms is None:
            if sku.sku not in self.draws:
                self._set_draw(sku.sku, Draw())
        else:
            self._set_draw(sku.sku, None)

    def _confirm(self, c: Confirm, now_ms: int, step: Step) -> None:
        d = self._set_reserved(c.id, None)
        if d is None:
            known = self.decisions.get(c.id)
            if known is not None and known.status == "confirmed":
                step.results.append(known)  # a repeated confirm: same answer, no change
                return
            # Expired, cancelled or unknown: the money must go back (the gateway refunds).
            step.refusals.append(
                Refusal(kind="confirm", key=c.id, reason="not_reserved",
                        status=known.status if known else None)
            )
            return
        sku = self._save_sku(d.sku)
        sku.reserved -= d.qty
        sku.sold += d.qty
        self._check_sku(sku)
        confirmed = _with_status(d, "confirmed", None, now_ms)
        self._finish(confirmed, sku, step)
        step.psp_refs[c.id] = c.psp_ref

    def _close(self, pid: str, kind: CloseKind, reason: Reason, now_ms: int, step: Step) -> None:
        """Release (payment failed) or cancel (buyer): a reservation gives its stock back."""
        d = self._set_reserved(pid, None)
        if d is None:
            known = self.decisions.get(pid)
            if known is not None and known.status in ("cancelled", "expired", "rejected"):
                step.results.append(known)  # already closed: idempotent
                return
            step.refusals.append(
                Refusal(kind=kind, key=pid, reason="not_reserved",
                        status=known.status if known else None)
            )
            return
        status: Status = "rejected" if reason == "payment_declined" else "cancelled"
        self._give_back(d, status, reason, now_ms, step)

    def _expire(self, now_ms: int, step: Step) -> None:
        heap = self._expiry_heap
        while heap and heap[0][0] <= now_ms:
            entry = heapq.heappop(heap)
            if self._journal is not None:
                self._journal.expired.append(entry)
            if self._is_due_entry(*entry):
                d = self._set_reserved(entry[1], None)
                assert d is not None
                self._give_back(d, "expired", "ttl_passed", now_ms, step)

    def _give_back(
        self, d: Decision, status: Status, reason: Reason, now_ms: int, step: Step
    ) -> None:
        sku = self._save_sku(d.sku)
        sku.reserved -= d.qty
        key = (d.sku, d.user_id)
        self._add_user_qty(key, -d.qty)
        self._check_sku(sku)
        if self.user_qty[key] < 0:
            raise InvariantViolation(f"negative user quantity for {key}")
        self._finish(_with_status(d, status, reason, now_ms), sku, step)

    def _finish(self, d: Decision, sku: Sku, step: Step) -> None:
        self._remember(d)
        step.updates[d.id] = d
        step.results.append(d)
        step.skus[sku.sku] = sku

    def _upsert(self, u: SkuUpsert, now_ms: int, step: Step) -> None:
        if not self.owns(u.sku):
            self._refuse_foreign("sku_upsert", u.request_id, u.sku, step)
            return
        sku = self.skus.get(u.sku)
        committed = (sku.reserved + sku.sold) if sku else 0
        # Out of bounds only from a sender that skipped make_upsert: refused, never a batch
        # that Postgres would fail (which would stop the writer on every redelivery).
        outside = out_of_bounds(u)
        refused = (outside[1] if outside is not None
                   else upsert_refusal(sku, u, now_ms) or _sale_window_refusal(sku, u))
        if refused is None and u.stock < committed:
            refused = f"stock {u.stock} is below the {committed} already reserved or sold"
        if refused is not None:
            step.refusals.append(Refusal(kind="sku_upsert", key=u.request_id, reason=refused))
            return
        if sku is None:
            self._save_sku(u.sku)
            sku = Sku(sku=u.sku, stock=u.stock)
            self.skus[u.sku] = sku
        else:
            sku = self._save_sku(u.sku)
        sku.stock = u.stock
        for name in ("price_cents", "max_per_user", "payment", "reservation_ttl_s",
                     "sale_start_ms", "sale_end_ms", "draw_window_s"):
            value = getattr(u, name)
            if value is not None:
                setattr(sku, name, value)
        for name in CLEARABLE_SKU_FIELDS.intersection(u.clear):
            setattr(sku, name, None)
        if sku.draw_seed is None:
            sku.draw_seed = u.draw_seed  # the first seed a SKU gets is its seed for good
        self._track_draw(sku)
        self._check_sku(sku)
        step.skus[sku.sku] = sku
        step.admin_applied.append(u.request_id)

    def _refuse_foreign(self, kind: RefusalKind, key: str, sku: str, step: Step) -> None:
        step.refusals.append(Refusal(kind=kind, key=key, reason=WRONG_SHARD))
        step.foreign_skus.append(sku)

    # -- bookkeeping --------------------------------------------------------------------------

    # Every change a step makes to the machine goes through these, so that it can be undone.

    def _remember(self, d: Decision) -> None:
        j = self._journal
        if j is not None and d.id not in j.decisions:
            j.decisions[d.id] = self.decisions.get(d.id)
        self.decisions[d.id] = d

    def _set_reserved(self, pid: str, d: Decision | None) -> Decision | None:
        """Reserve `pid` as `d`, or (None) close its reservation: the reservation it replaced."""
        j = self._journal
        was = self.reserved.get(pid)
        if j is not None and pid not in j.reserved:
            j.reserved[pid] = was
        if d is None:
            self.reserved.pop(pid, None)
        else:
            self.reserved[pid] = d
        return was

    def _add_user_qty(self, key: tuple[str, str], qty: int) -> None:
        j = self._journal
        was = self.user_qty.get(key)
        if j is not None and key not in j.user_qty:
            j.user_qty[key] = was
        self.user_qty[key] = (was or 0) + qty

    def _save_sku(self, name: str) -> Sku:
        """The SKU, its state before this step kept for `undo` (the first time it changes)."""
        j = self._journal
        sku = self.skus.get(name)
        if j is not None and name not in j.skus:
            j.skus[name] = dataclasses.replace(sku) if sku is not None else None
        return sku  # type: ignore[return-value]  # None only for an upsert creating it

    def _set_draw(self, name: str, draw: Draw | None) -> Draw:
        """Open a SKU's draw, or (None) close it: the draw it replaced (its entries intact)."""
        j = self._journal
        was = self.draws.get(name)
        if j is not None and name not in j.draws:
            j.draws[name] = was
        if draw is None:
            self.draws.pop(name, None)
        else:
            self.draws[name] = draw
        return was  # type: ignore[return-value]  # None only when opening one

    def _evict(self) -> None:
        """Bound memory: forget the oldest final decisions; Postgres still has them."""
        while len(self.decisions) > self.seen_max:
            pid = next(iter(self.decisions))
            if pid in self.reserved:
                # Still holding stock: move to the back rather than forget it.
                self.decisions.move_to_end(pid)
                if len(self.reserved) >= self.seen_max:
                    break
                continue
            j = self._journal
            if j is not None and pid not in j.decisions:
                j.decisions[pid] = self.decisions[pid]
            del self.decisions[pid]
            self.forgot_any = True

    def _check_sku(self, sku: Sku) -> None:
        if sku.reserved < 0 or sku.sold < 0 or sku.reserved + sku.sold > sku.stock:
            raise InvariantViolation(
                f"{sku.sku}: reserved {sku.reserved} + sold {sku.sold} vs stock {sku.stock}"
            )

    def _check_cap(self, sku: Sku, user_id: str) -> None:
        if sku.max_per_user is not None and self.user_qty[(sku.sku, user_id)] > sku.max_per_user:
            raise InvariantViolation(f"{sku.sku}: user {user_id} above cap {sku.max_per_user}")


def _sale_window_refusal(sku: Sku | None, u: SkuUpsert) -> str | None:
    """A sale that would end before it starts, once the change is applied to what the SKU has
    (make_upsert sees only the change: a sale_end before the stored sale_start gets past it)."""
    def merged(name: str) -> int | None:
        if name in u.clear:
            return None
        value: int | None = getattr(u, name)
        return value if value is not None else (getattr(sku, name) if sku else None)

    start, end = merged("sale_start_ms"), merged("sale_end_ms")
    if start is not None and end is not None and end <= start:
        return "sale_end must be after sale_start (change both in one request to move a sale)"
    return None


def _restore(target: dict[_K, _V], saved: dict[_K, _V | None]) -> None:
    for key, value in saved.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


def _with_status(d: Decision, status: Status, reason: Reason | None, now_ms: int) -> Decision:
    return msgspec.structs.replace(d, status=status, reason=reason, updated_at_ms=now_ms)
