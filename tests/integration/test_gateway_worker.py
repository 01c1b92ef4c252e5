"""The payment worker in-process against real NATS JetStream and the fake PSP process, with no
committer: jobs are published straight to the PAYMENTS stream and the confirm/release intents
read back from the INTENTS stream."""

from __future__ import annotations

import asyncio
import secrets
import time

import msgspec
import nats
import nats.js.errors
import pytest

from config.settings import Settings
from flashsale.jetstream import ensure_streams
from gateway import consumers
from gateway.fakepsp.client import FakePspAdmin
from gateway.messages import deadletter_decoder
from gateway.psp import StripeLikePsp
from gateway.worker import PaymentWorker
from proto.messages import (
    Confirm,
    PaymentJob,
    Refusal,
    Release,
    ResultBatch,
    encode,
    intent_decoder,
)

CALM = dict(latency_ms=0, decline_rate=0, timeout_rate=0, lost_rate=0, hang_s=0.4)


class Harness:
    def __init__(self, settings: Settings, js, psp: StripeLikePsp, admin: FakePspAdmin) -> None:
        self.settings = settings
        self.js = js
        self.psp = psp
        self.admin = admin
        self.gateway = PaymentWorker(settings, js, psp)

    async def job(self, token: str | None, ttl_s: float = 30, amount_cents: int = 1500) -> PaymentJob:
        job = PaymentJob(id="p_" + secrets.token_hex(8), sku="hot", user_id="u",
                         amount_cents=amount_cents, payment_token=token,
                         expires_at_ms=int((time.time() + ttl_s) * 1000), shard=1)
        await self.js.publish(self.settings.names.payments(1), encode(job),
                              headers={"Nats-Msg-Id": job.id})
        return job

    async def intent(self, kind: str, purchase_id: str):
        try:
            msg = await self.js.get_last_msg(self.settings.names.intents_stream(1),
                                             self.settings.names.intent(1, kind, purchase_id))
        except nats.js.errors.NotFoundError:
            return None
        return intent_decoder.decode(msg.data)

    async def outcome(self, purchase_id: str, timeout_s: float = 20):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for kind in ("confirm", "release"):
                found = await self.intent(kind, purchase_id)
                if found is not None:
                    return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"no confirm/release for {purchase_id}")


@pytest.fixture
async def harness(settings: Settings, fake):
    url, admin, _ = fake
    admin.set_rates(**CALM)
    s = msgspec.structs.replace(settings, psp_url=url, psp_timeout_s=0.25,
                                payment_backoff_base_s=0.05, payment_backoff_max_s=0.4,
                                payment_attempts_max=8, payment_start_margin_s=1.0,
                                payment_ack_wait_s=5.0, gateway_concurrency=16)
    nc = await nats.connect(s.nats_url)
    js = nc.jetstream()
    await ensure_streams(js, s)
    psp = StripeLikePsp(url, s.psp_api_key, timeout_s=s.psp_timeout_s)
    h = Harness(s, js, psp, admin)
    jobs, refusals = await consumers.subscribe(h.gateway, nc)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(consumers.run_jobs(h.gateway, jobs, stop)),
             asyncio.create_task(consumers.run_refusals(h.gateway, refusals, stop))]
    yield h
    stop.set()
    await asyncio.wait(tasks, timeout=5)
    await psp.close()
    await nc.close()
    admin.set_rates(**CALM)


async def test_confirm_decline_and_expired(harness: Harness):
    ok = await harness.job("tok_visa")
    declined = await harness.job("tok_chargeDeclined")
    no_token = await harness.job(None)
    expired = await harness.job("tok_visa", ttl_s=0.5)  # inside the start margin
    confirm = await harness.outcome(ok.id)
    assert isinstance(confirm, Confirm) and confirm.amount_cents == 1500
    intent = await harness.psp.retrieve(confirm.psp_ref)
    assert intent.status == "succeeded" and intent.purchase_id == ok.id
    assert await harness.outcome(declined.id) == Release(declined.id, "payment_declined")
    assert await harness.outcome(no_token.id) == Release(no_token.id, "payment_declined")
    await asyncio.sleep(0.5)
    assert await harness.intent("confirm", expired.id) is None
    assert await harness.intent("release", expired.id) is None
    assert await harness.psp.intents_for(expired.id) == []
    info = await harness.js.stream_info(harness.settings.names.payments_stream)
    assert info.state.messages == 0  # every job acked (work-queue retention removes them)


async def test_transient_failures_are_retried_without_double_charging(harness: Harness):
    harness.admin.set_rates(timeout_rate=0.25, lost_rate=0.25, hang_s=0.4, decline_rate=0.2)
    jobs = [await harness.job("tok_any") for _ in range(30)]
    outcomes = [await harness.outcome(j.id, timeout_s=40) for j in jobs]
    stats = harness.admin.stats()
    assert stats.get("timeouts", 0) > 0 and stats.get("lost_responses", 0) > 0
    for job, outcome in zip(jobs, outcomes, strict=True):
        intents = await harness.psp.intents_for(job.id)
        assert len(intents) == 1, f"{job.id} has {len(intents)} payment intents"
        if isinstance(outcome, Confirm):
            assert intents[0].id == outcome.psp_ref
            assert intents[0].net_captured_cents == job.amount_cents
        else:
            assert outcome.reason in ("payment_declined", "payment_failed")
            assert intents[0].net_captured_cents == 0
    assert sum(isinstance(o, Confirm) for o in outcomes) >= 15


async def test_psp_down_until_the_deadline_dead_letters_and_releases(harness: Harness):
    # Every call hangs past the client's timeout and past the reservation: the PSP does nothing
    # the gateway can see. The gateway keeps sending, round after round of
    # `payment_attempts_max`, until the reservation's deadline less the margin, then gives up.
    harness.admin.set_rates(timeout_rate=1.0, hang_s=10.0)
    s = harness.settings
    job = await harness.job("tok_flaky", ttl_s=6)
    sub = await harness.js.subscribe(s.names.deadletter(), stream=s.names.deadletter_stream)
    outcome = await harness.outcome(job.id, timeout_s=15)
    assert outcome == Release(job.id, "payment_failed")
    letter = deadletter_decoder.decode((await sub.next_msg(timeout=5)).data)
    assert letter.job == job and letter.step == "authorize"
    assert letter.reason == "expired_while_retrying"
    # Given up close to the deadline less the margin (one round of sends takes a second or two),
    # and no send started after it.
    charge_by_ms = job.expires_at_ms - s.payment_start_margin_s * 1000
    assert charge_by_ms - (s.payment_backoff_max_s + s.psp_timeout_s) * 1000 <= letter.at_ms
    assert letter.at_ms <= charge_by_ms + s.psp_timeout_s * 1000 + 1000  # + the look-up
    await sub.unsubscribe()


async def test_every_answer_lost_still_confirms_once(harness: Harness):
    # The PSP does all the work and no answer arrives: the gateway looks the intent up instead
    # of giving up, and confirms the one capture that happened.
    harness.admin.set_rates(lost_rate=1.0)
    job = await harness.job("tok_flaky")
    outcome = await harness.outcome(job.id)
    [intent] = await harness.psp.intents_for(job.id)
    assert outcome == Confirm(job.id, intent.id, job.amount_cents)
    assert intent.net_captured_cents == job.amount_cents


async def test_running_a_job_twice_charges_once(harness: Harness):
    job = PaymentJob(id="p_" + secrets.token_hex(8), sku="hot", user_id="u", amount_cents=999,
                     payment_token="tok_any", expires_at_ms=int((time.time() + 30) * 1000), shard=1)
    # As after a crash between publishing the confirm and acking the job: the redelivered job
    # runs again from the top.
    assert await harness.gateway.settle(job) == "confirmed"
    assert await harness.gateway.settle(job) == "confirmed"  # confirm publish -> 10077, fine
    [intent] = await harness.psp.intents_for(job.id)
    assert intent.net_captured_cents == 999
    confirm = await harness.intent("confirm", job.id)
    assert confirm == Confirm(job.id, intent.id, 999)


async def test_refused_confirm_is_refunded(harness: Harness):
    job = await harness.job("tok_visa")
    confirm = await harness.outcome(job.id)
    assert isinstance(confirm, Confirm)
    # The committer's answer when the reservation expired before the confirm arrived.
    batch = ResultBatch(shard=1, epoch=1, refusals=[
        Refusal(kind="confirm", key=job.id, reason="not_reserved", status="expired")])
    await harness.js.publish(harness.settings.names.results(1), encode(batch))
    deadline = time.monotonic() + 10
    while (await harness.psp.retrieve(confirm.psp_ref)).amount_refunded == 0:
        assert time.monotonic() < deadline, "refused confirm was not refunded"
        await asyncio.sleep(0.05)
    assert (await harness.psp.retrieve(confirm.psp_ref)).net_captured_cents == 0
