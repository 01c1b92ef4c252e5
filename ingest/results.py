"""What this ingest instance knows about decisions: the results-stream listener, a bounded LRU of
decisions, the latest state of each SKU, and the long-poll waiters it wakes.

All of it is an optimisation over Postgres (the source of truth): a decision missing here is read
from Postgres, so evicting entries or restarting the process loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from ingest import metrics
from proto.messages import FINAL_STATUSES, Decision, Refusal, ResultBatch, SkuState, result_decoder
from proto.subjects import Names

log = logging.getLogger("ingest.results")

# SKUs are few (an operator creates them) but the bound still has to exist.
SKUS_MAX = 100_000
# A listener that misses two heartbeats is recreated by nats-py from the last sequence seen.
HEARTBEAT_S = 2.0


class Watch:
    """One long-poll's interest in one purchase. The listener stores the newest decision (or a
    refusal) and completes `fut`; the waiter re-arms `fut` before reading `decision`, so an update
    landing between two waits is never lost."""

    __slots__ = ("decision", "fut", "purchase_id", "refusal")

    def __init__(self, purchase_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.purchase_id = purchase_id
        self.fut: asyncio.Future[None] = loop.create_future()
        self.decision: Decision | None = None
        self.refusal: Refusal | None = None

    def rearm(self) -> None:
        if self.fut.done():
            self.fut = asyncio.get_running_loop().create_future()

    def _wake(self) -> None:
        if not self.fut.done():
            self.fut.set_result(None)


class AdminWait(msgspec.Struct):
    sku: str
    fut: asyncio.Future  # resolves to SkuState | None (applied) or Refusal


class ResultsHub:
    def __init__(self, names: Names, cache_max: int, waiters_max: int) -> None:
        self.names = names
        self.cache_max = cache_max
        self.waiters_max = waiters_max
        self.decisions: OrderedDict[str, Decision] = OrderedDict()
        self.skus: OrderedDict[str, SkuState] = OrderedDict()
        self.watches: dict[str, set[Watch]] = {}
        self.watch_count = 0  # read by the metrics gauge at scrape time
        self.admin_waits: dict[str, AdminWait] = {}
        self._sub = None
        self._js: JetStreamContext | None = None
        self._resubscribing: asyncio.Task | None = None
        self.last_seq = 0  # stream sequence of the last result batch received

    async def start(self, js: JetStreamContext) -> None:
        self._js = js
        await self._subscribe()

    async def _subscribe(self) -> None:
        # Ordered push consumer: ephemeral, gap-free (nats-py resets it on a missed sequence or
        # missed heartbeats), no acks. From "now" at start, since older decisions are in
        # Postgres; after a reconnect, from the first batch not seen yet.
        if self.last_seq:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                    opt_start_seq=self.last_seq + 1)
        else:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        self._sub = await self._js.subscribe(
            self.names.results_all(), stream=self.names.results_stream, cb=self._on_msg,
            ordered_consumer=True, config=config, idle_heartbeat=HEARTBEAT_S,
        )

    @property
    def listening(self) -> bool:
        return self._sub is not None

    def on_reconnected(self) -> None:
        """The server may have restarted and lost the in-memory consumer: make a new one."""
        if self._js is None:
            return  # not started yet: start() subscribes
        if self._resubscribing is None or self._resubscribing.done():
            self._resubscribing = asyncio.create_task(self._resubscribe())

    async def _resubscribe(self) -> None:
        old, self._sub = self._sub, None
        if old is not None:
            try:
                await old.unsubscribe()
            except Exception:  # the old consumer is likely gone with the old connection
                pass
        delay_s = 0.1
        while True:
            try:
                await self._subscribe()
                log.info("results listener resubscribed", extra={"from_seq": self.last_seq + 1})
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("results resubscribe failed, retrying: %r", exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)

    async def stop(self) -> None:
        if self._resubscribing is not None:
            self._resubscribing.cancel()
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # closing anyway; the server drops ephemeral consumers itself
                pass
            self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        try:
            self.last_seq = max(self.last_seq, msg.metadata.sequence.stream)
        except nats.errors.NotJSMessageError:
            pass  # not from the consumer (cannot happen on this subscription); still decode it
        try:
            batch = result_decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.error("undecodable result batch on %s (%d bytes)", msg.subject, len(msg.data))
            return
        self.apply(batch)

    def apply(self, batch: ResultBatch) -> None:
        now_ms = int(time.time() * 1000)
        for state in batch.skus:
            self.put_sku(state)
        for d in batch.decisions:
            # First decision of a purchase (not a later confirm/expiry): the buyer-visible latency.
            if d.decided_at_ms == d.updated_at_ms:
                metrics.DECISION_LATENCY.observe(max(0, now_ms - d.accepted_at_ms) / 1000.0)
            self.put_decision(d)
            watches = self.watches.get(d.id)
            if watches:
                for w in watches:
                    w.decision = d
                    w._wake()
        for r in batch.refusals:
            if r.kind == "sku_upsert":
                self._answer_admin(r.key, r)
                continue
            watches = self.watches.get(r.key)
            if watches:
                for w in watches:
                    w.refusal = r
                    w._wake()
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
        # Nothing reserved either: a reservation that expires or is cancelled gives stock back.
        return state is not None and state.remaining <= 0 and state.reserved == 0

    # -- waiters ---------------------------------------------------------------------------

    def watch(self, purchase_id: str) -> Watch | None:
        """Register interest in a purchase; None when this instance holds too many waiters."""
        if self.watch_count >= self.waiters_max:
            return None
        w = Watch(purchase_id, asyncio.get_running_loop())
        self.watches.setdefault(purchase_id, set()).add(w)
        self.watch_count += 1
        return w

    def unwatch(self, w: Watch) -> None:
        watches = self.watches.get(w.purchase_id)
        if watches is None or w not in watches:
            return
        watches.discard(w)
        if not watches:
            del self.watches[w.purchase_id]
        self.watch_count -= 1

    def admin_wait(self, request_id: str, sku: str) -> AdminWait | None:
        if self.watch_count + len(self.admin_waits) >= self.waiters_max:
            return None
        wait = AdminWait(sku=sku, fut=asyncio.get_running_loop().create_future())
        self.admin_waits[request_id] = wait
        return wait

    def admin_done(self, request_id: str) -> None:
        self.admin_waits.pop(request_id, None)
