"""Fair drops: the draw that decides a SKU's opening burst (pure; part of the writer's machine).

A SKU with `draw_window_s > 0` does not sell first come first served in its first seconds:

- A purchase clicked (ingest's stamp, never later than the writer's clock) in
  `[sale_start, closes_at)`, `closes_at = sale_start + draw_window_s`, becomes an *entry*: it
  stays pending, nothing is decided. One entry per buyer: a further purchase of the same buyer
  clicked in the window is rejected at once with `already_in_draw` (it adds no chance).
- A purchase clicked after `closes_at` but reaching the writer before the draw *waits* for it:
  first come first served starts only once the draw is decided.
- At `decides_at = closes_at + DRAW_GRACE_MS` (proto/draw.py: the grace lets intents still on
  their way from ingest arrive), in the first step at or after it that the shell does not hold
  (committer/draw_hold.py holds a due draw until it has taken every intent stored so far), the writer
  decides every entry in one step, in the order of `proto.draw.draw_order(seed, entry ids)` with
  the ordinary rules (stock, caps), then the waiting purchases in their arrival order; each
  entry's decision carries its rank. A purchase clicked in the window that reaches the writer
  only after the draw is decided first come first served, without a rank.
- At most DRAW_ENTRIES_MAX entries and waiting purchases per SKU: beyond it a purchase is rejected
  at once with `draw_full` (no stock is taken; the stock that remains after the draw sells first
  come first served to later clicks).

Entries are written to Postgres with the batch that took them (their intents are then acked), so
a writer rebuilt after a crash, or a standby, holds the same entries and decides the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from proto.draw import DRAW_ENTRIES_MAX, DRAW_GRACE_MS, valid_seed
from proto.messages import TIME_MAX_MS, Purchase, Reason, SkuUpsert

if TYPE_CHECKING:
    from committer.step import Sku

__all__ = ["DRAW_ENTRIES_MAX", "DRAW_GRACE_MS", "Draw", "Entry"]


class Entry(msgspec.Struct, frozen=True):
    """A purchase the draw will decide: ranked if clicked inside the window, else waiting."""

    purchase: Purchase
    clicked_at_ms: int  # ingest's stamp, clamped to the writer's clock when it arrived
    arrival: int  # order of arrival at the writer, within its SKU's draw
    ranked: bool


@dataclass
class Draw:
    """One SKU's undecided draw."""

    entries: dict[str, Entry] = field(default_factory=dict)  # by purchase id, in arrival order
    buyers: set[str] = field(default_factory=set)  # users holding a ranked entry
    arrivals: int = 0  # the next arrival number

    def add(self, entry: Entry) -> None:
        self.entries[entry.purchase.id] = entry
        self.arrivals = max(self.arrivals, entry.arrival + 1)
        if entry.ranked:
            self.buyers.add(entry.purchase.user_id)

    def take(self, p: Purchase, clicked_at_ms: int, ranked: bool) -> Entry | Reason:
        """Enter a new purchase (not a retry of one already in), or say why it is refused."""
        if ranked and p.user_id in self.buyers:
            return "already_in_draw"
        if len(self.entries) >= DRAW_ENTRIES_MAX:
            return "draw_full"
        entry = Entry(purchase=p, clicked_at_ms=clicked_at_ms, arrival=self.arrivals, ranked=ranked)
        self.add(entry)
        return entry

    def ranked_ids(self) -> list[str]:
        return [pid for pid, e in self.entries.items() if e.ranked]

    def waiting(self) -> list[Entry]:
        return sorted((e for e in self.entries.values() if not e.ranked), key=lambda e: e.arrival)


def closes_at_ms(sku: Sku) -> int | None:
    """End of the draw window (exclusive), or None for a SKU without one."""
    if sku.draw_window_s <= 0 or sku.sale_start_ms is None:
        return None
    return sku.sale_start_ms + sku.draw_window_s * 1000


def decides_at_ms(sku: Sku) -> int | None:
    closes = closes_at_ms(sku)
    return None if closes is None else closes + DRAW_GRACE_MS


def waits_for_draw(sku: Sku, clicked_at_ms: int) -> bool:
    """A purchase of this SKU clicked then is decided by the draw (entered or waiting)."""
    return (sku.draw_window_s > 0 and sku.drawn_at_ms is None and sku.sale_start_ms is not None
            and clicked_at_ms >= sku.sale_start_ms)


def upsert_refusal(sku: Sku | None, u: SkuUpsert, now_ms: int) -> str | None:
    """Why an operator's change would break a draw, or None. A draw's window and sale_start are
    fixed once the window has opened (moving them would change who is in it), and a draw cannot
    be added to a sale already open."""
    old_window = sku.draw_window_s if sku else 0
    old_start = sku.sale_start_ms if sku else None
    window = u.draw_window_s if u.draw_window_s is not None else old_window
    if "sale_start_ms" in u.clear:
        start = None
    else:
        start = u.sale_start_ms if u.sale_start_ms is not None else old_start
    if u.draw_seed is not None and not valid_seed(u.draw_seed):
        return "draw_seed must be 64 lowercase hex digits"
    if window > 0 and start is None:
        return "a draw window needs a sale_start"
    if window > 0 and start is not None and start + window * 1000 + DRAW_GRACE_MS > TIME_MAX_MS:
        return "a draw must be decided by the end of year 9999 (UTC)"
    if window > 0 and (sku is None or sku.draw_seed is None) and u.draw_seed is None:
        return "a draw needs a seed"
    if (window, start) != (old_window, old_start):
        if old_window > 0 and old_start is not None and now_ms >= old_start:
            return "the draw window has opened: draw_window_s and sale_start are fixed"
        if window > 0 and start is not None and now_ms >= start:
            return "a draw window must open after the change: sale_start is already past"
    return None
