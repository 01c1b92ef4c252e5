"""The payment worker's JetStream side: its durable consumers, and the loops that hand it jobs
and refused confirms. A job is acked only once its confirm or release is stored; one that fails is
nak'd and comes back, which every step of the worker tolerates (gateway/worker.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from flashsale.logs import kv
from flashsale.pull import Puller
from gateway.metrics import JOB_SECONDS, JOBS, JOBS_INFLIGHT
from gateway.psp import GiveUp, PspError
from gateway.worker import PaymentWorker
from proto.messages import payment_decoder, result_decoder

log = logging.getLogger("gateway.worker")

PAYMENTS_DURABLE = "gateway"
REFUSALS_DURABLE = "gateway-refusals"
FETCH_WAIT_S = 1.0  # idle wait per fetch; a message returns it at once
# Jobs handed to this gateway and not acked yet: a few per slot, so the next job is already here.
JOBS_UNACKED_PER_SLOT = 4
JOBS_UNACKED_MIN = 1000
KEEP_ALIVES_PER_ACK_WAIT = 3  # "still working" signals sent per payment_ack_wait_s of a long job
REFUSAL_BATCHES_PER_FETCH = 100


async def subscribe(worker: PaymentWorker, nc: Client) -> tuple[Puller, Puller]:
    """The worker's two durable consumers: payment jobs, and results (for refused confirms)."""
    s, names, js = worker.settings, worker.names, worker.js
    await js.add_consumer(names.payments_stream, ConsumerConfig(
        durable_name=PAYMENTS_DURABLE,
        filter_subject=names.payments_all(),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=s.payment_ack_wait_s,
        max_deliver=-1,  # a job is never dropped: it ends in confirm, release or DLQ
        max_ack_pending=max(s.gateway_concurrency * JOBS_UNACKED_PER_SLOT, JOBS_UNACKED_MIN),
    ))
    await js.add_consumer(names.results_stream, ConsumerConfig(
        durable_name=REFUSALS_DURABLE,
        filter_subject=names.results_all(),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=s.payment_ack_wait_s,
        max_deliver=-1,
    ))
    jobs = await Puller.open(nc, names.payments_stream, PAYMENTS_DURABLE)
    refusals = await Puller.open(nc, names.results_stream, REFUSALS_DURABLE)
    return jobs, refusals


async def run_jobs(worker: PaymentWorker, sub: Puller, stop: asyncio.Event) -> None:
    """Settle jobs, `gateway_concurrency` at once, until `stop`; then drain."""
    inflight: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        free = worker.settings.gateway_concurrency - len(inflight)
        if free <= 0:
            await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            continue
        for msg in await sub.fetch(free, FETCH_WAIT_S):
            task = asyncio.create_task(on_job(worker, msg))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
    if inflight:
        # A stop drains: the jobs in flight get `gateway_drain_s` to finish, and the rest are
        # handed back unsettled (their reservations stay open) for the next gateway to
        # replay with the same idempotency keys. A stop never releases a reservation.
        _, unfinished = await asyncio.wait(inflight, timeout=worker.settings.gateway_drain_s)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)


async def on_job(worker: PaymentWorker, msg: Msg) -> None:
    """One delivered job: settled, then acked (nak'd to be redelivered if it failed)."""
    try:
        job = payment_decoder.decode(msg.data)
    except msgspec.DecodeError:
        log.error("undecodable payment job, terminating it", extra=kv(subject=msg.subject))
        await msg.term()
        return
    started = time.perf_counter()
    heartbeat = asyncio.create_task(
        _keep_alive(msg, worker.settings.payment_ack_wait_s / KEEP_ALIVES_PER_ACK_WAIT))
    JOBS_INFLIGHT.inc()
    try:
        outcome = await worker.settle(job)
    except asyncio.CancelledError:
        log.info("payment job handed back unsettled (stopping)", extra=kv(purchase_id=job.id))
        await _quietly(msg.nak())
        raise
    except Exception as e:
        JOBS.labels("error").inc()
        log.exception("payment job failed, will be redelivered",
                      extra=kv(purchase_id=job.id, error=str(e)))
        await _quietly(msg.nak(delay=worker.settings.payment_backoff_max_s))
        return
    finally:
        heartbeat.cancel()
        JOBS_INFLIGHT.dec()
    # Only now: the confirm/release is stored in JetStream, so losing this ack costs a replay.
    await _quietly(msg.ack())
    JOBS.labels(outcome).inc()
    JOB_SECONDS.observe(time.perf_counter() - started)
    log.info("payment job done", extra=kv(purchase_id=job.id, outcome=outcome, shard=job.shard))


async def _keep_alive(msg: Msg, every_s: float) -> None:
    # Retries can outlast ack_wait; tell JetStream we are still on it so it is not handed
    # to another gateway mid-charge.
    while True:
        await asyncio.sleep(every_s)
        await _quietly(msg.in_progress())


async def run_refusals(worker: PaymentWorker, sub: Puller, stop: asyncio.Event) -> None:
    """Refund the money of every confirm the committer refused, until `stop`."""
    while not stop.is_set():
        for msg in await sub.fetch(REFUSAL_BATCHES_PER_FETCH, FETCH_WAIT_S):
            try:
                batch = result_decoder.decode(msg.data)
            except msgspec.DecodeError:
                await msg.term()
                continue
            try:
                await worker.compensate(batch)
            except (GiveUp, PspError) as e:
                log.warning("compensation failed, will retry", extra=kv(error=str(e)))
                await _quietly(msg.nak(delay=worker.settings.payment_backoff_max_s))
                continue
            await _quietly(msg.ack())


async def _quietly(aw: Awaitable[object]) -> None:
    # Ack/nak failures only mean a redelivery, which every step here tolerates.
    try:
        await aw
    except Exception as e:
        log.debug("ack-type call failed", extra=kv(error=str(e)))
