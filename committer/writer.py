"""The writer of one shard, the committer's I/O loop: JetStream in, one Postgres transaction
per batch, results out.

fetch messages -> batch.read -> machine.step() -> commit the Step (fenced by epoch) -> ack ->
announce (committer/outbox.py). A message is acked only after the commit, so a crash anywhere
redelivers it whole; the machine, rebuilt from Postgres, recognises every id it already decided
and just announces it again. Between batches the writer renews its lease and, when idle, sends
a heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from committer import batch, metrics, store
from committer.draw_hold import DrawHold
from committer.links import Links
from committer.machine import Machine
from committer.outbox import Outbox, pending_payment_jobs
from committer.shard_rows import ShardRows
from committer.step import Step
from config.settings import Settings
from flashsale.logs import kv
from flashsale.pull import Puller
from proto.clock import now_ms
from proto.messages import ResultBatch
from proto.sharding import shard_of

log = logging.getLogger("committer")

# Pull requests the writer's consumer keeps waiting at once: the writer has one open; the rest
# is room for a restarted writer's request while the dead one's expires.
PULLS_WAITING_MAX = 64
BACKLOG_POLL_S = 2.0  # how often the backlog gauge is refreshed
# The shortest waits for due work: an expiry is decided within EXPIRY_TICK_MIN_S of its time, a
# draw held for a catch-up (DrawHold) is looked at again every DRAW_RECHECK_S, not in a spin.
EXPIRY_TICK_MIN_S = 0.01
DRAW_RECHECK_S = 0.05


class ShardWriter:
    """The writer of one shard: connected, holding the lease at `epoch`, state rebuilt.
    Built by `start` (the unit tests build it from fakes)."""

    def __init__(
        self, settings: Settings, shard: int, epoch: int, links: Links, machine: Machine,
        puller: Puller, rows: ShardRows, decided_seq: int,
    ) -> None:
        self.settings = settings
        self.shard = shard
        self.epoch = epoch
        self.links = links
        self.machine = machine
        self.puller = puller
        self.rows = rows
        self.names = settings.names
        self.label = str(shard)
        self.renew_every_s = settings.lease_ttl_s / 3
        self.decided_seq = decided_seq
        self.outbox = Outbox(links.nc, links.js, self.names, shard, epoch, rows)
        self.draw_hold = DrawHold(links.js, self.names, shard)
        self._busy = False  # the last fetch brought intents: the shard is under load
        self.renewed_at = time.monotonic()  # when the last lease renewal started
        self.refused_foreign = False  # a WRONG_SHARD refusal was logged (once per writer)

    @classmethod
    async def start(cls, settings: Settings, shard: int, epoch: int, links: Links,
                    rows: ShardRows) -> ShardWriter:
        # State is read after the lease is ours: whatever an older holder committed is in it,
        # and anything it tries to commit from now on fails.
        machine = await store.load_machine(links.conn, shard, settings.shards, settings.seen_max)
        names = settings.names
        durable = names.committer_durable(shard)
        info = await links.js.add_consumer(
            names.intents_stream(shard),
            ConsumerConfig(
                durable_name=durable,
                filter_subject=names.intents_of_shard(shard),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=settings.ack_wait_s,
                max_ack_pending=settings.max_ack_pending,
                max_waiting=PULLS_WAITING_MAX,
            ),
        )
        puller = await Puller.open(links.nc, names.intents_stream(shard), durable)
        decided_seq = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
        writer = cls(settings, shard, epoch, links, machine, puller, rows, decided_seq)
        # A crash between commit and publish may have lost payment jobs: hand them out again
        # (the stream de-duplicates by purchase id; the gateway is idempotent anyway).
        await writer.outbox.payments(pending_payment_jobs(machine))
        # The same crash may have lost SKU states (a draw decided, its seed revealed): say them
        # all again, so readers never keep a state older than Postgres.
        await writer.outbox.states(list(machine.skus.values()), decided_seq)
        metrics.EPOCH.labels(writer.label).set(epoch)
        for sku in machine.skus.values():
            metrics.STOCK_REMAINING.labels(sku.sku).set(sku.remaining)
        log.info(
            "committer started",
            extra=kv(shard=shard, epoch=epoch, skus=len(machine.skus),
                     decisions=len(machine.decisions), reserved=len(machine.reserved),
                     decided_seq=decided_seq),
        )
        return writer

    @property
    def ready(self) -> bool:
        """Holding a lease renewed within its TTL, and both connections up."""
        return (time.monotonic() - self.renewed_at < self.settings.lease_ttl_s
                and self.links.alive)

    async def run(self, stopping: asyncio.Event) -> None:
        backlog = asyncio.create_task(self._watch_backlog())
        try:
            while not stopping.is_set():
                await self.run_once()
                await self._keep_lease()
        finally:
            # Nothing here may raise: the exception that ended the loop decides what comes next.
            backlog.cancel()

    async def run_once(self) -> None:
        """One batch: read, decide and commit, ack, announce."""
        taken = await batch.read(await self._fetch(), self.settings.batch_max, self.puller)
        last_seq = taken.last_seq
        if last_seq is not None:
            await self.outbox.taken(last_seq)
        unknown = self.machine.unknown_ids(taken.intents)
        if unknown:
            self.machine.found_in_postgres(await self.rows.lookup(unknown))
        t = now_ms()
        held = await self.draw_hold.held(self.machine.next_draw_ms(), t, len(taken.taken))

        async def commit(step: Step) -> None:
            if taken.decodable or batch.announces(step):
                await self._commit(step, taken.decodable, t, taken.stored_at)

        step = await batch.decide(self.machine, taken.intents, t, commit, self.rows.lookup,
                                  draws_held=held)
        if step.foreign_skus:
            self._refusing_foreign(step.foreign_skus)
        # Only now is every decision durable: acknowledge, then tell the world.
        for msg in taken.decodable:
            await msg.ack()
        if last_seq is not None:
            self.decided_seq = max(self.decided_seq, last_seq)
        if taken.intents:
            metrics.BATCH_SIZE.labels(self.label).observe(len(taken.intents))
        if batch.announces(step):
            await self.outbox.step(step, self.decided_seq)
            metrics.observe_step(self.label, step, taken.intents)

    def _refusing_foreign(self, skus: list[str]) -> None:
        """A sender routed by another shard map (a stale process): its intents are refused,
        acked and answered like any other. One line per writer, not one per intent."""
        if self.refused_foreign:
            return
        self.refused_foreign = True
        log.error(
            "refusing intents for SKUs of other shards (logged once; counted in "
            "flashsale_refusals_total{reason=\"wrong_shard\"}): a sender routes by another shard map",
            extra=kv(shard=self.shard, shards=self.machine.shards, sku=skus[0],
                     owner_shard=shard_of(skus[0], self.machine.shards), count=len(skus)),
        )

    async def _commit(self, step: Step, acked: list[Msg], t: int, stored_at: dict[str, int]) -> None:
        """Even a batch with no writes goes through the lease check: a fenced writer must not ack
        intents (a confirm it refuses would never reach the real holder) nor announce anything."""
        started = time.perf_counter()
        renewing_at = time.monotonic()
        try:
            await self.rows.commit(step, t, stored_at)
        except store.DecidedElsewhere:
            raise  # nothing written: decided again at once (batch.decide), not redelivered
        except BaseException:
            # Nothing of this batch is acked: hand it straight back for redelivery.
            await asyncio.gather(*(m.nak() for m in acked), return_exceptions=True)
            raise
        self.renewed_at = renewing_at
        if step.has_writes:
            metrics.COMMIT_SECONDS.labels(self.label).observe(time.perf_counter() - started)

    async def _keep_lease(self) -> None:
        """Renew the lease when due, then (idle) tell ingest this shard has a live writer."""
        now = time.monotonic()
        if now - self.renewed_at >= self.renew_every_s:
            await self.rows.renew_lease()
            self.renewed_at = now
        if (now - self.outbox.announced_at >= self.settings.heartbeat_s
                and self.links.nc.is_connected):
            await self.outbox.results(
                ResultBatch(shard=self.shard, epoch=self.epoch, decided_seq=self.decided_seq))

    async def _fetch(self) -> list[Msg]:
        timeout_s = min(self.settings.fetch_timeout_s, self.renew_every_s, self.settings.heartbeat_s)
        for due, floor_s in ((self.machine.next_expiry_ms(), EXPIRY_TICK_MIN_S),
                             (self.machine.next_draw_ms(), DRAW_RECHECK_S)):
            if due is not None:
                timeout_s = min(timeout_s, max(floor_s, (due - now_ms()) / 1000))
        msgs = await self.puller.fetch(self.settings.batch_max, timeout_s)
        # Group commit: under load (the previous batch was not empty), a batch waits linger_ms
        # for more intents, so that one Postgres commit and one result publish (a disk flush
        # each) serve more purchases. An idle shard's first intent is decided at once.
        linger_s = self.settings.commit_linger_ms / 1000
        if msgs and linger_s and self._busy and len(msgs) < self.settings.batch_max:
            await asyncio.sleep(linger_s)
            msgs += await self.puller.fetch(self.settings.batch_max - len(msgs), 0)
        self._busy = bool(msgs)
        return msgs

    async def _watch_backlog(self) -> None:
        while True:
            try:
                info = await self.links.js.consumer_info(
                    self.names.intents_stream(self.shard), self.names.committer_durable(self.shard)
                )
                metrics.BACKLOG.labels(self.label).set(info.num_pending + info.num_ack_pending)
            except Exception:  # metrics must never take the writer down
                pass
            await asyncio.sleep(BACKLOG_POLL_S)
