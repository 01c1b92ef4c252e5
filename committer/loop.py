"""The committer's I/O shell: JetStream in, one Postgres transaction per batch, results out.

fetch intents -> machine.step() -> commit Step (fenced by epoch) -> ack -> publish results.
Acks happen only after the commit, so a crash anywhere redelivers the batch; the machine,
rebuilt from Postgres, recognises every id it already decided and just announces it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

import asyncpg
import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from committer import metrics, store
from committer.machine import Machine, Step
from config.settings import Settings
from flashsale.jetstream import ensure_streams
from flashsale.logs import kv
from flashsale.pull import Puller
from proto.clock import now_ms
from proto.messages import Intent, PaymentJob, Purchase, ResultBatch, encode, intent_decoder

log = logging.getLogger("committer")


class Committer:
    def __init__(self, settings: Settings, shard: int) -> None:
        if not 0 <= shard < settings.shards:
            raise ValueError(f"shard {shard} outside 0..{settings.shards - 1}")
        self.settings = settings
        self.shard = shard
        self.names = settings.names
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.label = str(shard)
        self.ready = False
        self.stopping = asyncio.Event()
        self.epoch = 0
        self.commits = 0
        self.machine: Machine | None = None
        self.nc: nats.NATS | None = None
        self.conn: asyncpg.Connection | None = None

    async def start(self, resume_epoch: int | None = None) -> None:
        """Take the shard (bump the epoch), or with `resume_epoch` reconnect as its holder."""
        s = self.settings
        self.nc = await nats.connect(
            s.nats_url, name=f"committer-{self.shard}", max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )
        self.js = self.nc.jetstream()
        await ensure_streams(self.js, s)
        self.conn = await asyncpg.connect(s.database_url)
        if resume_epoch is None:
            self.epoch = await store.acquire_lease(self.conn, self.shard, self.owner, now_ms())
        else:
            # Never steal the shard back from a committer that took it while we were away.
            if await store.lease_epoch(self.conn, self.shard) != resume_epoch:
                raise store.Fenced(f"shard {self.shard}: lease moved on from epoch {resume_epoch}")
            self.epoch = resume_epoch
        metrics.EPOCH.labels(self.label).set(self.epoch)
        # State is read after the lease is ours: whatever an older holder committed is in it,
        # and anything it tries to commit from now on fails.
        self.machine = await store.load_machine(self.conn, self.shard, s.shards, s.seen_max)
        durable = self.names.committer_durable(self.shard)
        await self.js.add_consumer(
            self.names.intents_stream,
            ConsumerConfig(
                durable_name=durable,
                filter_subject=self.names.intents_of_shard(self.shard),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=s.ack_wait_s,
                max_ack_pending=s.max_ack_pending,
                max_waiting=64,
            ),
        )
        self.puller = await Puller.open(self.nc, self.names.intents_stream, durable)
        # A crash between commit and publish may have lost payment jobs: hand them out again
        # (the stream de-duplicates by purchase id; the gateway is idempotent anyway).
        await self._publish_payments(await self._pending_payment_jobs())
        for sku in self.machine.skus.values():
            metrics.STOCK_REMAINING.labels(sku.sku).set(sku.remaining)
        log.info(
            "committer started",
            extra=kv(shard=self.shard, epoch=self.epoch, skus=len(self.machine.skus),
                     decisions=len(self.machine.decisions), reserved=len(self.machine.reserved)),
        )
        self.ready = True

    async def run(self) -> None:
        backlog = asyncio.create_task(self._watch_backlog())
        try:
            while not self.stopping.is_set():
                await self.run_once()
        finally:
            backlog.cancel()
            self.ready = False

    async def run_once(self) -> None:
        assert self.machine is not None and self.conn is not None
        msgs = await self._fetch()
        intents: list[Intent] = []
        acked: list[Msg] = []
        for msg in msgs:
            try:
                intents.append(intent_decoder.decode(msg.data))
                acked.append(msg)
            except msgspec.DecodeError:
                # Not something ingest or the gateway sends: keep it out of the loop for good.
                log.error("undecodable intent terminated", extra=kv(subject=msg.subject))
                await msg.term()
        unknown = self.machine.unknown_ids(intents)
        if unknown:
            for d in await store.lookup(self.conn, unknown):
                self.machine.load_decision(d)
        t = now_ms()
        step = self.machine.step(intents, t)
        if step.has_writes:
            started = time.perf_counter()
            try:
                await store.commit(self.conn, self.shard, self.epoch, step, t)
            except BaseException:
                # Nothing of this batch is committed: hand it straight back for redelivery.
                await asyncio.gather(*(m.nak() for m in acked), return_exceptions=True)
                raise
            metrics.COMMIT_SECONDS.labels(self.label).observe(time.perf_counter() - started)
            self.commits += 1
            if self.commits == self.settings.crash_after_commit:
                os._exit(137)  # the worst moment to die: committed, nothing acked or announced
        # Only now is every decision durable: acknowledge, then tell the world.
        for msg in acked:
            await msg.ack()
        if intents:
            metrics.BATCH_SIZE.labels(self.label).observe(len(intents))
        await self._announce(step, intents)

    async def _fetch(self) -> list[Msg]:
        assert self.machine is not None
        timeout_s = self.settings.fetch_timeout_s
        next_expiry = self.machine.next_expiry_ms()
        if next_expiry is not None:
            timeout_s = min(timeout_s, max(0.01, (next_expiry - now_ms()) / 1000))
        return await self.puller.fetch(self.settings.batch_max, timeout_s)

    async def _announce(self, step: Step, intents: list[Intent]) -> None:
        if not (step.results or step.refusals or step.skus or step.admin_applied):
            return
        batch = ResultBatch(
            shard=self.shard, epoch=self.epoch, decisions=step.results,
            skus=[s.state() for s in step.skus.values()], refusals=step.refusals,
            admin_applied=step.admin_applied,
        )
        # Stored by JetStream (one round trip per batch, not per decision): the gateway's
        # refunds of refused confirms and ingest's catch-up after a reconnect read it from there.
        try:
            await self.js.publish(self.names.results(self.shard), encode(batch), timeout=5)
        except (TimeoutError, nats.errors.Error) as e:
            # Decided and committed all the same: long-polls fall back to Postgres,
            # reconciliation repairs a lost refusal.
            log.error("results not stored", extra=kv(shard=self.shard, error=repr(e)))
        await self._publish_payments(step.payments)
        self._observe(step, intents)

    def _observe(self, step: Step, intents: list[Intent]) -> None:
        new_ids = {d.id for d in step.inserts}
        t = time.time() * 1000
        for d in step.inserts:
            metrics.DECISIONS.labels(self.label, d.status, d.reason or "").inc()
            metrics.DECISION_LATENCY.labels(self.label).observe(max(0.0, t - d.accepted_at_ms) / 1000)
        for d in step.updates.values():
            metrics.DECISIONS.labels(self.label, d.status, d.reason or "").inc()
        dupes = sum(1 for i in intents if isinstance(i, Purchase) and i.id not in new_ids)
        if dupes:
            metrics.DUPLICATES.labels(self.label).inc(dupes)
        for r in step.refusals:
            metrics.REFUSALS.labels(self.label, r.kind, r.reason[:40]).inc()
        for sku in step.skus.values():
            metrics.STOCK_REMAINING.labels(sku.sku).set(sku.remaining)

    async def _publish_payments(self, jobs: list[PaymentJob]) -> None:
        if not jobs:
            return
        subject = self.names.payments(self.shard)
        results = await asyncio.gather(
            *(
                self.js.publish(subject, encode(j), headers={"Nats-Msg-Id": j.id})
                for j in jobs
            ),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            # The reservation still expires on time and returns its stock; a restart re-sends.
            log.error("payment jobs not published", extra=kv(count=len(failed), error=repr(failed[0])))

    async def _pending_payment_jobs(self) -> list[PaymentJob]:
        """Jobs for every live reservation; the card token lives only in the purchase intent."""
        assert self.machine is not None
        # Thousands of live reservations must not mean thousands of round trips in series.
        lookups = asyncio.Semaphore(64)

        async def job(d) -> PaymentJob:
            token = None
            async with lookups:
                try:
                    msg = await self.js.get_last_msg(
                        self.names.intents_stream, self.names.intent(self.shard, "purchase", d.id),
                        direct=True,
                    )
                    intent = intent_decoder.decode(msg.data)
                    token = intent.payment_token if isinstance(intent, Purchase) else None
                except (nats.js.errors.NotFoundError, msgspec.DecodeError):
                    pass  # aged out of the stream: the gateway declines a job without a token
            return PaymentJob(
                id=d.id, sku=d.sku, user_id=d.user_id, amount_cents=d.amount_cents,
                payment_token=token, expires_at_ms=d.expires_at_ms or 0, shard=self.shard,
            )

        return list(await asyncio.gather(*(job(d) for d in list(self.machine.reserved.values()))))

    async def _watch_backlog(self) -> None:
        while True:
            try:
                info = await self.js.consumer_info(
                    self.names.intents_stream, self.names.committer_durable(self.shard)
                )
                metrics.BACKLOG.labels(self.label).set(info.num_pending + info.num_ack_pending)
            except Exception:  # metrics must never take the writer down
                pass
            await asyncio.sleep(2)

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()
        if self.conn is not None:
            await self.conn.close()
