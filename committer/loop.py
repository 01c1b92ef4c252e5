"""The committer's I/O shell: JetStream in, one Postgres transaction per batch, results out.

fetch messages (each a packed batch of intents, or one intent) -> machine.step() -> commit Step
(fenced by epoch) -> ack -> publish results. A message is decided as a unit, in one transaction
with the others fetched with it, and acked only after the commit, so a crash anywhere redelivers
it whole; the machine, rebuilt from Postgres, recognises every id it already decided and just
announces it again.
Between batches the writer renews its lease and, when idle, sends a heartbeat.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from committer import metrics, store
from committer.links import Links
from committer.machine import Machine, Step
from config.settings import Settings
from flashsale.logs import kv
from flashsale.pull import Puller
from proto.clock import now_ms
from proto.messages import (
    Decision,
    Intent,
    PaymentJob,
    Progress,
    Purchase,
    ResultBatch,
    encode,
    stored_decoder,
    unpacked,
)
from proto.sharding import shard_of

log = logging.getLogger("committer")

# Decisions per ResultBatch message: a draw decides up to DRAW_ENTRIES_MAX purchases in one step,
# and one message must stay well under NATS's max_payload (1 MB).
RESULTS_PER_MESSAGE_MAX = 2_000
# How long past its time a draw waits for the writer to catch up with its intents stream.
DRAW_HOLD_MAX_MS = 30_000


class Committer:
    """The writer of one shard: connected, holding the lease at `epoch`, state rebuilt.
    Built only by `start`."""

    def __init__(
        self, settings: Settings, shard: int, epoch: int, links: Links, machine: Machine,
        puller: Puller, decided_seq: int,
    ) -> None:
        self.settings = settings
        self.shard = shard
        self.epoch = epoch
        self.links = links
        self.machine = machine
        self.puller = puller
        self.names = settings.names
        self.label = str(shard)
        self.ttl_ms = int(settings.lease_ttl_s * 1000)
        self.renew_every_s = settings.lease_ttl_s / 3
        self.decided_seq = decided_seq
        self._draw_cut: tuple[int, int] | None = None  # (due draw's time, stream seq it waits for)
        self._busy = False  # the last fetch brought intents: the shard is under load
        self.commits = 0
        self.renewed_at = time.monotonic()  # when the last lease renewal started
        self.announced_at = 0.0  # when the last ResultBatch went out
        self.refused_foreign = False  # a WRONG_SHARD refusal was logged (once per writer)

    @classmethod
    async def start(cls, settings: Settings, shard: int, epoch: int, links: Links) -> Committer:
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
                max_waiting=64,
            ),
        )
        puller = await Puller.open(links.nc, names.intents_stream(shard), durable)
        decided_seq = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
        committer = cls(settings, shard, epoch, links, machine, puller, decided_seq)
        # A crash between commit and publish may have lost payment jobs: hand them out again
        # (the stream de-duplicates by purchase id; the gateway is idempotent anyway).
        await committer._publish_payments(await committer._pending_payment_jobs())
        # The same crash may have lost SKU states (a draw decided, its seed revealed): say them
        # all again, so readers never keep a state older than Postgres.
        states = [s.state() for s in machine.skus.values()]
        for at in range(0, len(states), RESULTS_PER_MESSAGE_MAX):
            await committer._publish_results(ResultBatch(
                shard=shard, epoch=epoch, skus=states[at:at + RESULTS_PER_MESSAGE_MAX],
                decided_seq=decided_seq,
            ))
        metrics.EPOCH.labels(committer.label).set(epoch)
        for sku in machine.skus.values():
            metrics.STOCK_REMAINING.labels(sku.sku).set(sku.remaining)
        log.info(
            "committer started",
            extra=kv(shard=shard, epoch=epoch, skus=len(machine.skus),
                     decisions=len(machine.decisions), reserved=len(machine.reserved),
                     decided_seq=decided_seq),
        )
        return committer

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
        msgs = await self._fetch()
        intents: list[Intent] = []
        acked: list[Msg] = []
        # Where each new purchase's intent is stored: the payment token is read back from there.
        stored_at: dict[str, int] = {}
        for n, msg in enumerate(msgs):
            if len(intents) >= self.settings.batch_max:
                # Packed messages hold many intents: a transaction takes about batch_max of
                # them, the rest of the fetch waits for the next one.
                self.puller.unread(msgs[n:])
                msgs = msgs[:n]
                break
            try:
                inside = unpacked(stored_decoder.decode(msg.data))
            except msgspec.DecodeError:
                # Not something ingest or the gateway sends: keep it out of the loop for good.
                log.error("undecodable intent terminated", extra=kv(subject=msg.subject))
                await msg.term()
                continue
            intents += inside
            acked.append(msg)
            seq = msg.metadata.sequence.stream
            for intent in inside:
                if isinstance(intent, Purchase):
                    stored_at.setdefault(intent.id, seq)
        seqs = [msg.metadata.sequence.stream for msg in msgs]
        if seqs:
            await self._announce_taken(max(seqs))
        unknown = self.machine.unknown_ids(intents)
        if unknown:
            self.machine.found_in_postgres(await store.lookup(self.links.conn, unknown))
        t = now_ms()
        held = await self._draws_held(t, len(msgs))

        async def commit(step: Step) -> None:
            if acked or _announces(step):
                await self._commit(step, acked, t, stored_at)

        step = await decide(self.machine, intents, t, commit,
                            lambda ids: store.lookup(self.links.conn, ids), draws_held=held)
        if step.foreign_skus:
            self._refusing_foreign(step.foreign_skus)
        # Only now is every decision durable: acknowledge, then tell the world.
        for msg in acked:
            await msg.ack()
        if seqs:
            self.decided_seq = max(self.decided_seq, *seqs)
        if intents:
            metrics.BATCH_SIZE.labels(self.label).observe(len(intents))
        if _announces(step):
            await self._announce(step, intents)

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

    async def _draws_held(self, t: int, taken: int) -> bool:
        """A due draw waits until this writer has taken every intent stored before it was
        first looked at when due (the cut): all delivered, none out with an earlier holder of
        the shard (a crashed writer's batch comes back after ack_wait) nor unacked beyond the
        batch in hand. So a writer that lags, restarts or takes over decides the same entries,
        and intents that keep arriving after the cut do not delay it. Bounded: DRAW_HOLD_MAX_MS
        after it was due, the draw is decided all the same (later arrivals go first come first
        served)."""
        due = self.machine.next_draw_ms()
        if due is None or t < due:
            return False
        if t - due > DRAW_HOLD_MAX_MS:
            log.warning("draw decided without a full catch-up", extra=kv(shard=self.shard))
            return False
        try:
            info = await self.links.js.consumer_info(
                self.names.intents_stream(self.shard), self.names.committer_durable(self.shard)
            )
        except (TimeoutError, nats.errors.Error):
            return True
        delivered = info.delivered.stream_seq or 0 if info.delivered else 0
        if self._draw_cut is None or self._draw_cut[0] != due:
            # Every message of the stream matches this consumer: the last stored sequence.
            self._draw_cut = (due, delivered + (info.num_pending or 0))
        return delivered < self._draw_cut[1] or (info.num_ack_pending or 0) > taken

    async def _announce_taken(self, taken_seq: int) -> None:
        """Tell ingest how far this batch reaches before deciding it: a purchase in it is no
        longer behind anyone (queue position 0). Core NATS, not stored: a lost one only delays
        a position update until the batch's results."""
        try:
            await self.links.nc.publish(
                self.names.progress(self.shard),
                encode(Progress(shard=self.shard, epoch=self.epoch, taken_seq=taken_seq)),
            )
        except Exception:  # never worth failing a batch for
            pass

    async def _commit(self, step: Step, acked: list[Msg], t: int, stored_at: dict[str, int]) -> None:
        """Even a batch with no writes goes through the lease check: a fenced writer must not ack
        intents (a confirm it refuses would never reach the real holder) nor announce anything."""
        started = time.perf_counter()
        renewing_at = time.monotonic()
        try:
            await store.commit(self.links.conn, self.shard, self.epoch, self.ttl_ms, step, t, stored_at)
            if step.has_writes:
                self.commits += 1
                if self.commits == self.settings.crash_after_commit:
                    os._exit(137)  # the worst moment to die: committed, nothing acked or announced
                if self.settings.fail_after_commit and self.commits % self.settings.fail_after_commit == 0:
                    raise asyncpg.InternalClientError("cannot switch to state 15 (chaos: fail_after_commit)")
        except store.DecidedElsewhere:
            raise  # nothing written: decided again at once (_decide), not redelivered
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
            await store.renew_lease(self.links.conn, self.shard, self.epoch, self.ttl_ms)
            self.renewed_at = now
        if now - self.announced_at >= self.settings.heartbeat_s and self.links.nc.is_connected:
            # Bounded by the renewal pace: a slow NATS must not let the lease lapse.
            await self._publish_results(
                ResultBatch(shard=self.shard, epoch=self.epoch, decided_seq=self.decided_seq),
                timeout_s=self.renew_every_s,
            )

    async def _fetch(self) -> list[Msg]:
        timeout_s = min(self.settings.fetch_timeout_s, self.renew_every_s, self.settings.heartbeat_s)
        next_expiry = self.machine.next_expiry_ms()
        # A draw held for a catch-up (_draws_held) is looked at again every 50 ms, not in a spin.
        for due, floor_s in ((next_expiry, 0.01), (self.machine.next_draw_ms(), 0.05)):
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

    async def _announce(self, step: Step, intents: list[Intent]) -> None:
        # A big step (a draw) goes out in several messages; the SKUs' states come with the last,
        # so a SKU never reads as drawn before its decisions are out.
        n = RESULTS_PER_MESSAGE_MAX
        chunks = [step.results[at:at + n] for at in range(0, len(step.results), n)] or [[]]
        for chunk in chunks[:-1]:
            await self._publish_results(ResultBatch(
                shard=self.shard, epoch=self.epoch, decisions=chunk, decided_seq=self.decided_seq,
            ))
        await self._publish_results(ResultBatch(
            shard=self.shard, epoch=self.epoch, decisions=chunks[-1],
            skus=[s.state() for s in step.skus.values()], refusals=step.refusals,
            admin_applied=step.admin_applied, decided_seq=self.decided_seq,
        ))
        await self._publish_payments(step.payments)
        self._observe(step, intents)

    async def _publish_results(self, batch: ResultBatch, timeout_s: float = 5.0) -> None:
        # Stored by JetStream (one round trip per batch, not per decision): the gateway's
        # refunds of refused confirms and ingest's catch-up after a reconnect read it from there.
        self.announced_at = time.monotonic()
        try:
            await self.links.js.publish(self.names.results(self.shard), encode(batch), timeout=timeout_s)
        except (TimeoutError, nats.errors.Error) as e:
            # Decided and committed all the same: long-polls fall back to Postgres,
            # reconciliation repairs a lost refusal.
            if batch.decisions or batch.refusals or batch.skus or batch.admin_applied:
                log.error("results not stored", extra=kv(shard=self.shard, error=repr(e)))

    def _observe(self, step: Step, intents: list[Intent]) -> None:
        new_ids = {d.id for d in step.inserts}
        t = time.time() * 1000
        drawn = set(step.drawn)
        metrics.count_decisions(self.label, itertools.chain(step.inserts, step.updates.values()))
        # A draw's purchases wait for it on purpose.
        metrics.observe_decision_latency(
            self.label, t, (d.accepted_at_ms for d in step.inserts if d.sku not in drawn)
        )
        refused = {r.key for r in step.refusals if r.kind == "purchase"}
        dupes = sum(1 for i in intents
                    if isinstance(i, Purchase) and i.id not in new_ids and i.id not in refused)
        if dupes:
            metrics.DUPLICATES.labels(self.label).inc(dupes)
        for r in step.refusals:
            metrics.REFUSALS.labels(self.label, r.kind, r.reason[:40]).inc()
        for sku in step.skus.values():
            metrics.STOCK_REMAINING.labels(sku.sku).set(sku.remaining)

    async def _publish_payments(self, jobs: list[PaymentJob]) -> None:
        if not jobs:
            return
        jobs = await self._with_tokens(jobs)
        subject = self.names.payments(self.shard)
        results = await asyncio.gather(
            *(
                self.links.js.publish(subject, encode(j), headers={"Nats-Msg-Id": j.id})
                for j in jobs
            ),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            # The reservation still expires on time and returns its stock; a restart re-sends.
            log.error("payment jobs not published", extra=kv(count=len(failed), error=repr(failed[0])))

    async def _pending_payment_jobs(self) -> list[PaymentJob]:
        """Jobs for every live reservation (their tokens are read back by _with_tokens)."""
        return [
            PaymentJob(
                id=d.id, sku=d.sku, user_id=d.user_id, amount_cents=d.amount_cents,
                payment_token=None, expires_at_ms=d.expires_at_ms or 0, shard=self.shard,
            )
            for d in self.machine.reserved.values()
        ]

    async def _with_tokens(self, jobs: list[PaymentJob]) -> list[PaymentJob]:
        """The card token lives only in the purchase intent, never in Postgres: a job for a
        purchase rebuilt from Postgres (a live reservation, a draw's entry) reads it back from
        the intents stream message that holds it (purchases.intent_seq, committed by now)."""
        missing = [j.id for j in jobs if j.payment_token is None]
        if not missing:
            return jobs
        stored_at = await store.intent_seqs(self.links.conn, missing)
        # Thousands of them must not mean thousands of round trips in series.
        lookups = asyncio.Semaphore(64)
        stream = self.names.intents_stream(self.shard)

        async def fill(job: PaymentJob) -> PaymentJob:
            seq = stored_at.get(job.id)
            if job.payment_token is not None or seq is None:
                return job
            async with lookups:
                try:
                    msg = await self.links.js.get_msg(stream, seq, direct=True)
                    held = unpacked(stored_decoder.decode(msg.data or b""))
                except (nats.js.errors.NotFoundError, msgspec.DecodeError):
                    return job  # aged out of the stream: the gateway declines a job without a token
            token = next((i.payment_token for i in held if isinstance(i, Purchase) and i.id == job.id), None)
            return msgspec.structs.replace(job, payment_token=token)

        return list(await asyncio.gather(*(fill(j) for j in jobs)))

    async def _watch_backlog(self) -> None:
        while True:
            try:
                info = await self.links.js.consumer_info(
                    self.names.intents_stream(self.shard), self.names.committer_durable(self.shard)
                )
                metrics.BACKLOG.labels(self.label).set(info.num_pending + info.num_ack_pending)
            except Exception:  # metrics must never take the writer down
                pass
            await asyncio.sleep(2)


async def decide(
    machine: Machine, intents: list[Intent], t: int, commit: Callable[[Step], Awaitable[None]],
    lookup: Callable[[list[str]], Awaitable[list[Decision | Purchase]]], draws_held: bool = False,
) -> Step:
    """Decide a batch and commit it. A purchase id that Postgres turns out to hold already
    (another shard decided it: a key reused with another SKU) is read back, the step taken back
    and the batch decided again, that intent refused. Every round learns at least one id of
    the batch that the next round no longer inserts, so this ends within the batch's size."""
    learned: list[Decision | Purchase] = []
    while True:
        step = machine.step(intents, t, draws_held=draws_held)
        try:
            await commit(step)
            return step
        except store.DecidedElsewhere as e:
            machine.undo()
            found = await lookup(e.ids)
            if len(found) != len(e.ids):
                # The insert met these rows, so they are committed: unreadable means broken.
                raise store.CorruptWrite(f"ids {e.ids} conflict but cannot be read") from e
            learned += found
            machine.found_in_postgres(learned)


def _announces(step: Step) -> bool:
    return bool(step.results or step.refusals or step.skus or step.admin_applied)
