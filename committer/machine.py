"""The committer's decision logic: a pure, single-threaded state machine (sans I/O).

Feed it intents and the clock; it returns a `Step`: the rows to write, the results to publish
and the payment jobs to hand to the gateway. It owns the stock of its shard's SKUs, so it decides
without locks; the I/O shell (`committer/writer.py`) commits each Step in one Postgres
transaction before anything it describes becomes visible. What it remembers, and how a step is
taken back, is committer/memory.py; the draw's rules are committer/draw.py.

It decides only its own shard's SKUs (`shard_of` under the system's shard map): a purchase or SKU
change for another shard's SKU is refused without touching any state, so a misrouted intent can
never create or overwrite a SKU another writer owns.

It must never oversell, never decide one purchase id twice and never break a per-user cap; those
are asserted here (a violation would cost money) and tested exhaustively in tests/unit/.

A purchase id is one buyer's Idempotency-Key, and a key reused with a SKU of another shard sends
a second purchase intent with that id to another writer. Whichever writer commits the id first
(a decision, or an entry in a draw) holds it; the other learns it from Postgres
(`found_in_postgres`: before deciding, or when its batch insert meets the row), takes back the
step it decided (`undo`) and decides the batch again, refusing that intent: no stock moves, its
waiters are told. A draw that meets another shard's decision of one of its entries refuses that
entry the same way. No request can stop a writer.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from committer.draw import (
    Draw,
    Entry,
    closes_at_ms,
    decides_at_ms,
    upsert_refusal,
    waits_for_draw,
)
from committer.memory import Memory
from committer.step import Sku, Step
from proto.draw import draw_order
from proto.messages import (
    CLEARABLE_SKU_FIELDS,
    KEY_REUSED,
    Cancel,
    Confirm,
    Decision,
    Intent,
    PaymentJob,
    Purchase,
    Reason,
    Refusal,
    RefusalKind,
    Release,
    SkuUpsert,
    Status,
    out_of_bounds,
)
from proto.sharding import shard_of

# The intents that close a reservation before it is paid (the Refusal kinds they can earn).
CloseKind = Literal["release", "cancel"]
# The Refusal reason of a purchase or SKU change whose SKU another shard owns.
WRONG_SHARD = "wrong_shard"
# The SKU fields a change sets when it carries them (None: left as they are).
_SETTABLE_SKU_FIELDS = ("price_cents", "max_per_user", "payment", "reservation_ttl_s",
                        "sale_start_ms", "sale_end_ms", "draw_window_s")


class Machine(Memory):
    def __init__(self, shard: int, shards: int = 1, seen_max: int = 2_000_000) -> None:
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} outside 0..{shards - 1}")
        super().__init__(seen_max)
        self.shard = shard
        self.shards = shards

    def owns(self, sku: str) -> bool:
        return shard_of(sku, self.shards) == self.shard

    def step(self, intents: list[Intent], now_ms: int, draws_held: bool = False) -> Step:
        """Decide a batch. `draws_held`: the shell is not sure it holds every entry yet (intents
        taken by an earlier holder of the shard may still be redelivered): no draw is decided."""
        step = Step()
        self._begin_step()
        for d in self._pop_expired(now_ms):
            self._give_back(d, "expired", "ttl_passed", now_ms, step)
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

    # -- purchases ----------------------------------------------------------------------------

    def _purchase(
        self, p: Purchase, now_ms: int, step: Step, draw_rank: int | None = None
    ) -> None:
        if self._answered(p, step):
            return
        if not self.owns(p.sku):
            # Not decided here, not remembered: the owner may still decide this id.
            self._refuse_foreign("purchase", p.id, p.sku, step)
            return
        sku = self.skus.get(p.sku)
        # The buyer's click time, as stamped by ingest, decides the sale window; never the future.
        at_ms = min(p.accepted_at_ms, now_ms)
        reason = _closed_reason(sku, at_ms)
        if reason is None:
            assert sku is not None
            if waits_for_draw(sku, at_ms):
                reason = self._enter_draw(p, sku, at_ms, step)
                if reason is None:
                    return  # pending until the draw
            else:
                reason = self._stock_refusal(p, sku)
        if reason is not None:
            d = _decision(p, "rejected", reason, 0, now_ms, draw_rank)
        else:
            assert sku is not None
            d = self._accept(p, sku, now_ms, draw_rank, step)
        self._set_decision(d)
        step.inserts.append(d)
        step.results.append(d)

    def _answered(self, p: Purchase, step: Step) -> bool:
        """A purchase id already decided (here or by another shard) or waiting in a draw is
        answered from that, never decided again."""
        known = self.decisions.get(p.id) or self.stored.get(p.id) or self._entry_of(p.id)
        if known is None:
            return False
        if known.request_hash and known.request_hash != p.request_hash:
            # The key was used for another request (another SKU, qty or card), and that one
            # is the purchase: this intent is refused, whatever shard decided the other.
            status = known.status if isinstance(known, Decision) else "pending"
            step.refusals.append(
                Refusal(kind="purchase", key=p.id, reason=KEY_REUSED, status=status,
                        request_hash=p.request_hash)
            )
        elif isinstance(known, Decision):
            # A retry, a redelivery or a replay: announce the one decision again, change nothing.
            step.results.append(known)
        # else a retry of a purchase waiting in a draw: still pending
        return True

    def _stock_refusal(self, p: Purchase, sku: Sku) -> Reason | None:
        """Why a purchase of a SKU on sale first come first served is rejected, if it is."""
        if sku.remaining < p.qty:
            return "sold_out"
        if (sku.max_per_user is not None
                and self.user_qty.get((p.sku, p.user_id), 0) + p.qty > sku.max_per_user):
            return "limit_exceeded"
        return None

    def _accept(self, p: Purchase, sku: Sku, now_ms: int, draw_rank: int | None,
                step: Step) -> Decision:
        """Take the stock: reserved until paid (a payment job goes out), or sold at once."""
        amount = sku.price_cents * p.qty
        remaining_before = sku.remaining
        self._add_user_qty((p.sku, p.user_id), p.qty)
        self._save_sku(sku.sku)
        if sku.payment == "required":
            sku.reserved += p.qty
            expires = now_ms + sku.reservation_ttl_s * 1000
            d = _decision(p, "reserved", None, amount, now_ms, draw_rank, expires_at_ms=expires)
            self._set_reserved(p.id, d)
            step.payments.append(
                PaymentJob(
                    id=p.id, sku=p.sku, user_id=p.user_id, amount_cents=amount,
                    payment_token=p.payment_token, expires_at_ms=expires, shard=self.shard,
                )
            )
        else:
            sku.sold += p.qty
            d = _decision(p, "confirmed", None, amount, now_ms, draw_rank)
        sku.check()
        self._check_cap(sku, p.user_id)
        assert sku.remaining == remaining_before - p.qty, (sku.sku, p.id)
        step.skus[sku.sku] = sku
        return d

    # -- the draw (committer/draw.py) ----------------------------------------------------------

    def _enter_draw(self, p: Purchase, sku: Sku, clicked_at_ms: int, step: Step) -> Reason | None:
        """Take a purchase into its SKU's draw (None), or the reason it is rejected at once."""
        draw = self.draws[sku.sku]  # a retry of an entry is pending already (_answered)
        closes = closes_at_ms(sku)
        assert closes is not None
        buyers = len(draw.buyers)
        entry = draw.take(p, clicked_at_ms, ranked=clicked_at_ms < closes)
        if not isinstance(entry, Entry):
            return entry
        self._note_entry(draw, entry, len(draw.buyers) > buyers)
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
        served; all with the ordinary rules. Drawn first, so none of them enters a draw again.

        An entry whose id another shard decided (one key reused there, both committed at the
        same moment; `found_in_postgres`) is no entry: not ranked nor counted, it is refused
        as any intent with that id is (`_answered`), and its row goes with the others."""
        assert sku.draw_seed is not None  # upsert_refusal: no window without a seed
        self._save_sku(sku.sku)
        sku.drawn_at_ms = now_ms
        ranked = draw.ranked_ids()
        order = draw_order(sku.draw_seed, [pid for pid in ranked if pid not in self.stored])
        sku.draw_entries = len(order)
        for rank, pid in enumerate(order, start=1):
            self._purchase(draw.entries[pid].purchase, now_ms, step, draw_rank=rank)
        decided_elsewhere = [draw.entries[pid] for pid in ranked if pid in self.stored]
        for entry in decided_elsewhere + draw.waiting():
            self._purchase(entry.purchase, now_ms, step)
        step.drawn.append(sku.sku)
        step.skus[sku.sku] = sku

    # -- reservations closed: paid, released, cancelled, expired -------------------------------

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
        sku.check()
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

    def _give_back(
        self, d: Decision, status: Status, reason: Reason, now_ms: int, step: Step
    ) -> None:
        sku = self._save_sku(d.sku)
        sku.reserved -= d.qty
        self._add_user_qty((d.sku, d.user_id), -d.qty)
        sku.check()
        self._finish(_with_status(d, status, reason, now_ms), sku, step)

    def _finish(self, d: Decision, sku: Sku, step: Step) -> None:
        self._set_decision(d)
        step.updates[d.id] = d
        step.results.append(d)
        step.skus[sku.sku] = sku

    # -- SKU changes ----------------------------------------------------------------------------

    def _upsert(self, u: SkuUpsert, now_ms: int, step: Step) -> None:
        if not self.owns(u.sku):
            self._refuse_foreign("sku_upsert", u.request_id, u.sku, step)
            return
        sku = self.skus.get(u.sku)
        refused = _upsert_refusal(sku, u, now_ms)
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
        for name in _SETTABLE_SKU_FIELDS:
            value = getattr(u, name)
            if value is not None:
                setattr(sku, name, value)
        for name in CLEARABLE_SKU_FIELDS.intersection(u.clear):
            setattr(sku, name, None)
        if sku.draw_seed is None:
            sku.draw_seed = u.draw_seed  # the first seed a SKU gets is its seed for good
        self._track_draw(sku)
        sku.check()
        step.skus[sku.sku] = sku
        step.admin_applied.append(u.request_id)

    def _refuse_foreign(self, kind: RefusalKind, key: str, sku: str, step: Step) -> None:
        step.refusals.append(Refusal(kind=kind, key=key, reason=WRONG_SHARD))
        step.foreign_skus.append(sku)


def _closed_reason(sku: Sku | None, at_ms: int) -> Reason | None:
    """Why nothing of the SKU is on sale to a click at `at_ms`, if it is not."""
    if sku is None:
        return "unknown_sku"
    if sku.sale_start_ms is not None and at_ms < sku.sale_start_ms:
        return "sale_not_open"
    if sku.sale_end_ms is not None and at_ms >= sku.sale_end_ms:
        return "sale_ended"
    return None


def _decision(p: Purchase, status: Status, reason: Reason | None, amount_cents: int, now_ms: int,
              draw_rank: int | None, expires_at_ms: int | None = None) -> Decision:
    """A purchase's first decision."""
    return Decision(
        id=p.id, sku=p.sku, user_id=p.user_id, qty=p.qty, status=status, reason=reason,
        amount_cents=amount_cents, accepted_at_ms=p.accepted_at_ms, decided_at_ms=now_ms,
        updated_at_ms=now_ms, expires_at_ms=expires_at_ms, request_hash=p.request_hash,
        draw_rank=draw_rank,
    )


def _upsert_refusal(sku: Sku | None, u: SkuUpsert, now_ms: int) -> str | None:
    """Why a SKU change is refused, if it is. Out of bounds only from a sender that skipped
    make_upsert: refused, never a batch that Postgres would fail (which would stop the writer on
    every redelivery)."""
    outside = out_of_bounds(u)
    if outside is not None:
        return outside[1]
    refused = upsert_refusal(sku, u, now_ms) or _sale_window_refusal(sku, u)
    committed = (sku.reserved + sku.sold) if sku else 0
    if refused is None and u.stock < committed:
        refused = f"stock {u.stock} is below the {committed} already reserved or sold"
    return refused


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


def _with_status(d: Decision, status: Status, reason: Reason | None, now_ms: int) -> Decision:
    return msgspec.structs.replace(d, status=status, reason=reason, updated_at_ms=now_ms)
