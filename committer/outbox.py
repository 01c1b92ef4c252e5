"""What a writer tells the world once a batch is committed: results, payment jobs, progress.

Results go to the shard's results stream (stored: ingest follows them there, and so do the
gateway's refunds of refused confirms), payment jobs to the payments stream (de-duplicated by
purchase id), progress over core NATS (not stored).

A result batch is a plain publish that the stream captures, without waiting for the stream's
answer: it rides in one socket write with the batch's acks, and the server sends nothing back.
Postgres holds every decision in it first: a lost batch only sends waiters to Postgres, and
reconciliation repairs a lost refusal.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from committer.machine import Machine
from committer.shard_rows import ShardRows
from committer.step import Sku, Step
from flashsale.logs import kv
from proto.messages import (
    PaymentJob,
    Progress,
    Purchase,
    ResultBatch,
    encode,
    stored_decoder,
    unpacked,
)
from proto.subjects import Names

log = logging.getLogger("committer")

# Decisions per ResultBatch message: a draw decides up to DRAW_ENTRIES_MAX purchases in one step,
# and one message must stay well under NATS's max_payload (1 MB).
RESULTS_PER_MESSAGE_MAX = 2_000
# Card tokens read back from the intents stream at once: thousands of jobs (a restart with many
# live reservations, a big draw) must not mean thousands of round trips in series, nor at once.
TOKEN_LOOKUPS_CONCURRENT_MAX = 64


class Outbox:
    """The publishing side of one shard's writer at `epoch`."""

    def __init__(self, nc: Client, js: JetStreamContext, names: Names, shard: int, epoch: int,
                 rows: ShardRows) -> None:
        self.nc = nc
        self.js = js
        self.names = names
        self.shard = shard
        self.epoch = epoch
        self.rows = rows  # where a job's intent is stored, to read its card token back
        self.announced_at = 0.0  # time.monotonic() of the last ResultBatch sent

    async def taken(self, taken_seq: int) -> None:
        """Tell ingest how far a batch reaches before deciding it: a purchase in it is no
        longer behind anyone (queue position 0). Core NATS, not stored: a lost one only delays
        a position update until the batch's results."""
        try:
            await self.nc.publish(
                self.names.progress(self.shard),
                encode(Progress(shard=self.shard, epoch=self.epoch, taken_seq=taken_seq)),
            )
        except Exception:  # never worth failing a batch for
            pass

    async def step(self, step: Step, decided_seq: int) -> None:
        """A committed step's decisions, refusals and SKU states, then its payment jobs. A big
        step (a draw) goes out in several messages; the SKUs' states come with the last, so a
        SKU never reads as drawn before its decisions are out."""
        n = RESULTS_PER_MESSAGE_MAX
        chunks = [step.results[at:at + n] for at in range(0, len(step.results), n)] or [[]]
        for chunk in chunks[:-1]:
            await self.results(ResultBatch(
                shard=self.shard, epoch=self.epoch, decisions=chunk, decided_seq=decided_seq,
            ))
        await self.results(ResultBatch(
            shard=self.shard, epoch=self.epoch, decisions=chunks[-1],
            skus=[s.state() for s in step.skus.values()], refusals=step.refusals,
            admin_applied=step.admin_applied, decided_seq=decided_seq,
        ))
        await self.payments(step.payments)

    async def states(self, skus: list[Sku], decided_seq: int) -> None:
        """Every SKU's state (a writer starting: a crash may have lost some, and readers must
        never keep a state older than Postgres)."""
        states = [s.state() for s in skus]
        for at in range(0, len(states), RESULTS_PER_MESSAGE_MAX):
            await self.results(ResultBatch(
                shard=self.shard, epoch=self.epoch,
                skus=states[at:at + RESULTS_PER_MESSAGE_MAX], decided_seq=decided_seq,
            ))

    async def results(self, batch: ResultBatch) -> None:
        self.announced_at = time.monotonic()
        try:
            await self.nc.publish(self.names.results(self.shard), encode(batch))
        except nats.errors.Error as e:  # the connection is closed or its buffer full
            # Decided and committed all the same: long-polls fall back to Postgres,
            # reconciliation repairs a lost refusal.
            if batch.decisions or batch.refusals or batch.skus or batch.admin_applied:
                log.error("results not sent", extra=kv(shard=self.shard, error=repr(e)))

    async def payments(self, jobs: list[PaymentJob]) -> None:
        if not jobs:
            return
        jobs = await self._with_tokens(jobs)
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

    async def _with_tokens(self, jobs: list[PaymentJob]) -> list[PaymentJob]:
        """The card token lives only in the purchase intent, never in Postgres: a job for a
        purchase rebuilt from Postgres (a live reservation, a draw's entry) reads it back from
        the intents stream message that holds it (purchases.intent_seq, committed by now)."""
        missing = [j.id for j in jobs if j.payment_token is None]
        if not missing:
            return jobs
        stored_at = await self.rows.intent_seqs(missing)
        lookups = asyncio.Semaphore(TOKEN_LOOKUPS_CONCURRENT_MAX)
        stream = self.names.intents_stream(self.shard)

        async def fill(job: PaymentJob) -> PaymentJob:
            seq = stored_at.get(job.id)
            if job.payment_token is not None or seq is None:
                return job
            async with lookups:
                try:
                    msg = await self.js.get_msg(stream, seq, direct=True)
                    held = unpacked(stored_decoder.decode(msg.data or b""))
                except (nats.js.errors.NotFoundError, msgspec.DecodeError):
                    return job  # aged out of the stream: the gateway declines a job without a token
            token = next((i.payment_token for i in held if isinstance(i, Purchase) and i.id == job.id), None)
            return msgspec.structs.replace(job, payment_token=token)

        return list(await asyncio.gather(*(fill(j) for j in jobs)))


def pending_payment_jobs(machine: Machine) -> list[PaymentJob]:
    """Jobs for every live reservation (their tokens are read back by the Outbox)."""
    return [
        PaymentJob(
            id=d.id, sku=d.sku, user_id=d.user_id, amount_cents=d.amount_cents,
            payment_token=None, expires_at_ms=d.expires_at_ms or 0, shard=machine.shard,
        )
        for d in machine.reserved.values()
    ]
