"""What the committer's machine remembers, and how a step's changes to it are taken back.

Every change a step makes goes through the journaled writes here (`_set_decision`,
`_set_reserved`, `_add_user_qty`, `_save_sku`, `_set_draw`, `_evict`), which `_remember` what
they replace, so that a step whose batch is not committed can be undone (`undo`). Rebuilding
from Postgres (`load_*`, `found_in_postgres`) is here too. The rules that decide live in
committer/machine.py. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from committer.draw import Draw, Entry, decides_at_ms
from committer.step import InvariantViolation, Sku
from proto.messages import Decision, Intent, Purchase

_K = TypeVar("_K")
_V = TypeVar("_V")
# The tables of the memory that a step's journal keeps the replaced values of, by their name.
_Table = Literal["skus", "decisions", "reserved", "user_qty", "draws"]


@dataclass
class _Journal:
    """What one step changed in the machine, as it was before (None: absent), so that a step
    whose batch is not committed can be taken back (`Memory.undo`)."""

    skus: dict[str, Sku | None] = field(default_factory=dict)
    decisions: dict[str, Decision | None] = field(default_factory=dict)
    reserved: dict[str, Decision | None] = field(default_factory=dict)
    user_qty: dict[tuple[str, str], int | None] = field(default_factory=dict)
    expired: list[tuple[int, str]] = field(default_factory=list)  # expiry heap entries popped
    draws: dict[str, Draw | None] = field(default_factory=dict)  # by SKU: taken or put in
    # Entries taken into a draw, in order: (the draw, the entry, whether its buyer was added).
    entered: list[tuple[Draw, Entry, bool]] = field(default_factory=list)
    forgot_any: bool = False


class Memory:
    """One shard's SKUs, decisions, reservations, per-user quantities and undecided draws."""

    def __init__(self, seen_max: int) -> None:
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
        them from now on.

        A decision for an id waiting in one of this machine's draws is another shard's (one key
        reused, both committed at the same moment): it is the purchase, and the entry is refused
        when the draw is decided, never decided (`Machine._decide_draw`)."""
        for d in rows:
            if d.id in self.decisions:
                continue  # its own decision
            if isinstance(d, Purchase) and self._entry_of(d.id) is not None:
                continue  # its own entry, waiting in one of its draws
            self.stored[d.id] = d
            self.stored.move_to_end(d.id)
        # Forgetting one costs a second look in Postgres, never a second decision; the rows
        # just given are kept whatever their number (the batch being decided needs them).
        while len(self.stored) > max(self.seen_max, len(rows)):
            self.stored.popitem(last=False)

    # -- what is due --------------------------------------------------------------------------

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

    def _entry_of(self, pid: str) -> Purchase | None:
        """The purchase waiting under this id in any of this machine's draws."""
        for draw in self.draws.values():
            entry = draw.entries.get(pid)
            if entry is not None:
                return entry.purchase
        return None

    # -- taking a step back -------------------------------------------------------------------

    def _begin_step(self) -> None:
        self._journal = _Journal(forgot_any=self.forgot_any)

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

    # -- journaled writes: every change a step makes goes through these -----------------------

    def _remember(self, table: _Table, key: Hashable, was: object) -> None:
        """Keep for `undo` what `table[key]` was (None: absent) before this step first changed
        it; a later change in the same step keeps nothing. A SKU is changed in place after
        this, so it is kept as a copy."""
        j = self._journal
        if j is None:
            return  # outside a step (rebuilding): nothing to take back
        saved: dict[Hashable, object] = getattr(j, table)
        if key not in saved:
            saved[key] = dataclasses.replace(was) if isinstance(was, Sku) else was

    def _set_decision(self, d: Decision) -> None:
        self._remember("decisions", d.id, self.decisions.get(d.id))
        self.decisions[d.id] = d

    def _set_reserved(self, pid: str, d: Decision | None) -> Decision | None:
        """Reserve `pid` as `d`, or (None) close its reservation: the reservation it replaced."""
        was = self.reserved.get(pid)
        self._remember("reserved", pid, was)
        if d is None:
            self.reserved.pop(pid, None)
        else:
            self.reserved[pid] = d
            assert d.expires_at_ms is not None
            heapq.heappush(self._expiry_heap, (d.expires_at_ms, pid))
        return was

    def _pop_expired(self, now_ms: int) -> list[Decision]:
        """Close the reservations due by `now_ms`: the reservations they were."""
        heap = self._expiry_heap
        closed: list[Decision] = []
        while heap and heap[0][0] <= now_ms:
            entry = heapq.heappop(heap)
            if self._journal is not None:
                self._journal.expired.append(entry)
            if self._is_due_entry(*entry):
                d = self._set_reserved(entry[1], None)
                assert d is not None
                closed.append(d)
        return closed

    def _add_user_qty(self, key: tuple[str, str], qty: int) -> None:
        was = self.user_qty.get(key)
        self._remember("user_qty", key, was)
        self.user_qty[key] = (was or 0) + qty
        if self.user_qty[key] < 0:
            raise InvariantViolation(f"negative user quantity for {key}")

    def _save_sku(self, name: str) -> Sku:
        """The SKU, its state before this step kept for `undo` (the first time it changes)."""
        sku = self.skus.get(name)
        self._remember("skus", name, sku)
        return sku  # type: ignore[return-value]  # None only for an upsert creating it

    def _set_draw(self, name: str, draw: Draw | None) -> Draw:
        """Open a SKU's draw, or (None) close it: the draw it replaced (its entries intact)."""
        was = self.draws.get(name)
        self._remember("draws", name, was)
        if draw is None:
            self.draws.pop(name, None)
        else:
            self.draws[name] = draw
        return was  # type: ignore[return-value]  # None only when opening one

    def _track_draw(self, sku: Sku) -> None:
        if sku.draw_window_s > 0 and sku.drawn_at_ms is None:
            if sku.sku not in self.draws:
                self._set_draw(sku.sku, Draw())
        else:
            self._set_draw(sku.sku, None)

    def _note_entry(self, draw: Draw, entry: Entry, buyer_added: bool) -> None:
        if self._journal is not None:
            self._journal.entered.append((draw, entry, buyer_added))

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
            self._remember("decisions", pid, self.decisions[pid])
            del self.decisions[pid]
            self.forgot_any = True

    def _check_cap(self, sku: Sku, user_id: str) -> None:
        if sku.max_per_user is not None and self.user_qty[(sku.sku, user_id)] > sku.max_per_user:
            raise InvariantViolation(f"{sku.sku}: user {user_id} above cap {sku.max_per_user}")


def _restore(target: dict[_K, _V], saved: dict[_K, _V | None]) -> None:
    for key, value in saved.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
