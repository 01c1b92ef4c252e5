"""What this ingest instance knows about decisions: a bounded LRU of decisions, the latest state
of each SKU, and the long-poll waiters it wakes. Pure: `ingest.listener` feeds it result batches.

All of it is an optimisation over Postgres (the source of truth): a decision missing here is read
from Postgres, so evicting entries or restarting the process loses nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import msgspec

from flashsale.metrics import observe_many
from ingest import metrics
from ingest.edge.refusals import note_refusal
from ingest.edge.waits import WaitBudget
from ingest.queue import ShardQueues
from proto.clock import now_ms
from proto.messages import (
    FINAL_STATUSES,
    Decision,
    Purchase,
    Refusal,
    RefusalKind,
    ResultBatch,
    SkuState,
    Status,
)

# SKUs are few (an operator creates them) but the bound still has to exist.
SKUS_MAX = 100_000


# A purchase as ingest sees it: its committed Decision, or the stored intent while pending.
PurchaseState = Decision | Purchase


def status_of(state: PurchaseState) -> Status:
    return state.status if isinstance(state, Decision) else "pending"


def is_decided(state: PurchaseState) -> bool:
    return isinstance(state, Decision)


def is_final(state: PurchaseState) -> bool:
    return isinstance(state, Decision) and state.status in FINAL_STATUSES


def newer(current: PurchaseState, candidate: Decision | None) -> PurchaseState:
    if candidate is None:
        return current
    if isinstance(current, Purchase) or candidate.updated_at_ms > current.updated_at_ms:
        return candidate
    return current


class Awaits(msgspec.Struct, frozen=True):
    """The intent a request sent and waits on: only a refusal of that very intent answers it
    (one purchase id has several intents: the purchase, a confirm, a cancel, and for a key
    reused with another SKU a second purchase, each refused on its own)."""

    kind: RefusalKind
    request_hash: str = ""  # a purchase: the hash of this request's body


class Watch:
    """One long-poll's interest in one purchase. The listener stores the newest decision (or a
    refusal of the intent it `awaits`) and completes `fut`; the waiter re-arms `fut` before
    reading `decision`, so an update landing between two waits is never lost."""

    __slots__ = ("awaits", "buyer", "client", "decision", "fut", "purchase_id", "refusal")

    def __init__(
        self, purchase_id: str, loop: asyncio.AbstractEventLoop, client: str | None = None,
        buyer: str | None = None, awaits: Awaits | None = None,
    ) -> None:
        self.purchase_id = purchase_id
        self.client = client  # who this wait is counted against (edge.waits.WaitBudget)
        self.buyer = buyer
        self.awaits = awaits  # None: a read (GET, event stream), which no refusal answers
        self.fut: asyncio.Future[None] = loop.create_future()
        self.decision: Decision | None = None
        self.refusal: Refusal | None = None

    def answered_by(self, r: Refusal) -> bool:
        a = self.awaits
        return a is not None and r.kind == a.kind and (
            r.kind != "purchase" or r.request_hash == a.request_hash
        )

    def decided(self, d: Decision) -> None:
        """A newer state of the purchase arrived: keep it and wake the waiter."""
        self.decision = d
        self.wake()

    def refused(self, r: Refusal) -> None:
        """An intent of the purchase was refused: the waiter hears of it only if it is the
        intent it awaits."""
        if self.answered_by(r):
            self.refusal = r
            self.wake()

    def rearm(self) -> None:
        if self.fut.done():
            self.fut = asyncio.get_running_loop().create_future()

    def wake(self) -> None:
        if not self.fut.done():
            self.fut.set_result(None)

    async def until(
        self,
        current: PurchaseState,
        done: Callable[[PurchaseState], bool],
        wait_s: float,
    ) -> PurchaseState:
        """Wait until `done(state)`, a refusal of the awaited intent or `wait_s`; the state."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            # Read after (re-)arming: an update between two waits is in self.decision already.
            current = newer(current, self.decision)
            if done(current) or self.refusal is not None:
                return current
            remaining = deadline - loop.time()
            if remaining <= 0:
                return current
            try:
                await asyncio.wait_for(self.fut, remaining)
            except TimeoutError:
                return current
            self.rearm()


class AdminWait(msgspec.Struct):
    sku: str
    fut: asyncio.Future[SkuState | Refusal | None]  # None: applied, state not cached


class ResultsHub:
    def __init__(self, cache_max: int, waiters_max: int, waits: WaitBudget | None = None,
                 queues: ShardQueues | None = None) -> None:
        self.cache_max = cache_max
        # Queue positions of pending purchases and the writers' progress (none: no positions).
        self.queues = queues or ShardQueues(0, cache_max, silence_s=0, silent_accept_max=0,
                                            now_s=time.monotonic())
        self.waiters_max = waiters_max
        # Waits per client IP and per buyer; by default only the process cap applies.
        self.waits = waits or WaitBudget(waiters_max, waiters_max)
        self.decisions: OrderedDict[str, Decision] = OrderedDict()
        # Purchase intents this instance stored that it has not seen decided: the first use of
        # their keys, visible here (a reuse with another body is a 422 at once) before the
        # follower reads them into queues.pending, which holds every instance's, in stream order.
        self.stored_here: OrderedDict[str, Purchase] = OrderedDict()
        self.skus: OrderedDict[str, SkuState] = OrderedDict()
        self.watches: dict[str, set[Watch]] = {}
        self.watch_count = 0  # read by the metrics gauge at scrape time
        self.admin_waits: dict[str, AdminWait] = {}

    def apply(self, batch: ResultBatch) -> None:
        arrived_ms = now_ms()
        self.queues.results(batch.shard, batch.decided_seq, time.monotonic())
        for state in batch.skus:
            self.put_sku(state)
        # First decision of a purchase (not a later confirm/expiry): the buyer-visible latency.
        observe_many(metrics.DECISION_LATENCY, [
            max(0, arrived_ms - d.accepted_at_ms) / 1000.0
            for d in batch.decisions if d.decided_at_ms == d.updated_at_ms])
        for d in batch.decisions:
            self.put_decision(d)
            self.stored_here.pop(d.id, None)
            self.queues.decided(d.id)
            for w in self.watches.get(d.id, ()):
                w.decided(d)
        for r in batch.refusals:
            if r.kind == "sku_upsert":
                self._answer_admin(r.key, r)
                continue
            if r.kind == "purchase":
                mine = self.stored_here.get(r.key)
                if mine is not None and mine.request_hash == r.request_hash:
                    del self.stored_here[r.key]  # refused: its key names another request's purchase
            for w in self.watches.get(r.key, ()):
                w.refused(r)
        for request_id in batch.admin_applied:
            admin = self.admin_waits.get(request_id)
            if admin is not None:
                self._answer_admin(request_id, self.skus.get(admin.sku))

    def _answer_admin(self, request_id: str, outcome: SkuState | Refusal | None) -> None:
        admin = self.admin_waits.get(request_id)
        if admin is not None and not admin.fut.done():
            admin.fut.set_result(outcome)

    # -- decisions -------------------------------------------------------------------------

    def put_decision(self, d: Decision) -> None:
        decisions = self.decisions
        old = decisions.get(d.id)
        if old is not None:
            if old.updated_at_ms > d.updated_at_ms:
                return  # a stale copy (e.g. read from Postgres before this result arrived)
            decisions.move_to_end(d.id)
        decisions[d.id] = d
        if len(decisions) > self.cache_max:
            decisions.popitem(last=False)

    def remember_final(self, d: Decision) -> None:
        """Cache a row read from Postgres, but only if final: a non-final state can change, and
        only the stream (not a poll of Postgres) would tell this cache about it."""
        if d.status in FINAL_STATUSES:
            self.put_decision(d)

    def decision(self, purchase_id: str) -> Decision | None:
        return self.decisions.get(purchase_id)

    def stored(self, intent: Purchase) -> None:
        """This instance stored `intent` (a new purchase): until it is decided or refused, a
        reuse of its key with another body is answered here."""
        if intent.id in self.decisions:
            return
        self.stored_here[intent.id] = intent
        if len(self.stored_here) > self.cache_max:
            self.stored_here.popitem(last=False)

    # -- SKUs ------------------------------------------------------------------------------

    def put_sku(self, state: SkuState) -> None:
        self.skus[state.sku] = state
        self.skus.move_to_end(state.sku)
        if len(self.skus) > SKUS_MAX:
            self.skus.popitem(last=False)

    def remember_sku(self, state: SkuState) -> None:
        # A row read from Postgres must not overwrite a newer state the stream delivered meanwhile.
        if state.sku not in self.skus:
            self.put_sku(state)

    def is_sold_out(self, sku: str) -> bool:
        state = self.skus.get(sku)
        return state is not None and state.sold_out

    # -- waiters ---------------------------------------------------------------------------

    def watch(
        self, purchase_id: str, client: str | None = None, buyer: str | None = None,
        awaits: Awaits | None = None,
    ) -> Watch | None:
        """Register interest in a purchase; None when this instance holds too many waiters.
        Raises a 429 `problems.Rejection` when `client` or `buyer` holds its share already."""
        if self.watch_count >= self.waiters_max:
            note_refusal("waits_total", client or "")
            return None
        self.waits.acquire(client, buyer)
        w = Watch(purchase_id, asyncio.get_running_loop(), client, buyer, awaits)
        self.watches.setdefault(purchase_id, set()).add(w)
        self.watch_count += 1
        return w

    @contextmanager
    def watching(
        self, purchase_id: str, enabled: bool, *, client: str | None = None,
        buyer: str | None = None, awaits: Awaits | None = None,
    ) -> Iterator[Watch | None]:
        """A watch on `purchase_id` for the duration of a request (None if not `enabled`, or when
        this instance already holds waiters_max). Registered before the request publishes or
        looks anything up, so a decision that lands meanwhile is not missed. Counted against
        `client` (IP) and `buyer` (None: not counted): a 429 when either holds its share.
        `awaits`: the intent the request sent, whose refusal answers it (None: a read)."""
        w = self.watch(purchase_id, client, buyer, awaits) if enabled else None
        try:
            yield w
        finally:
            if w is not None:
                self.unwatch(w)

    def unwatch(self, w: Watch) -> None:
        watches = self.watches.get(w.purchase_id)
        if watches is None or w not in watches:
            return
        watches.discard(w)
        if not watches:
            del self.watches[w.purchase_id]
        self.watch_count -= 1
        self.waits.release(w.client, w.buyer)

    def admin_wait(self, request_id: str, sku: str) -> AdminWait | None:
        if self.watch_count + len(self.admin_waits) >= self.waiters_max:
            return None
        wait = AdminWait(sku=sku, fut=asyncio.get_running_loop().create_future())
        self.admin_waits[request_id] = wait
        return wait

    def admin_done(self, request_id: str) -> None:
        self.admin_waits.pop(request_id, None)
