"""The payment worker's decisions, against an in-memory PSP, JetStream and purchases table: what
it charges, what it tells the shard (confirm or release), what it gives back, and that nothing is
charged for a reservation that is closed or past its deadline. The same paths with the real
fake PSP and servers: tests/integration/test_gateway_worker.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import nats.js.errors
import pytest

from config.settings import Settings
from gateway import consumers
from gateway.messages import deadletter_decoder
from gateway.psp import CardDeclined, PaymentIntent, PspError, Refund
from gateway.worker import PaymentWorker
from proto.clock import now_ms
from proto.messages import (
    Confirm,
    PaymentJob,
    Refusal,
    Release,
    ResultBatch,
    Status,
    encode,
    intent_decoder,
)
from proto.streams import ERR_STORE_FAILED

PID = "p_" + "1" * 30
PRICE_CENTS = 500
SETTINGS = Settings(
    namespace="unit", payment_attempts_max=2, payment_backoff_base_s=0.001,
    payment_backoff_max_s=0.002, payment_start_margin_s=0.05,
)


def job(token: str | None = "tok_visa", ttl_ms: int = 30_000) -> PaymentJob:
    return PaymentJob(id=PID, sku="sku", user_id="alice", amount_cents=PRICE_CENTS,
                      payment_token=token, expires_at_ms=now_ms() + ttl_ms, shard=1)


def transient(step: str) -> PspError:
    return PspError(f"{step}: answer lost", transient=True)


class FakePsp:
    """A PaymentProvider in memory. `failing[step]`: how many calls of the step fail with a
    transient error before one goes through; `lost[step]`: how many do the work and then lose
    their answer (transient)."""

    def __init__(self) -> None:
        self.intents: dict[str, PaymentIntent] = {}
        self.failing: dict[str, int] = {}
        self.lost: dict[str, int] = {}
        self.calls: list[str] = []

    def _before(self, step: str) -> None:
        self.calls.append(step)
        if self.failing.get(step, 0) > 0:
            self.failing[step] -= 1
            raise transient(step)

    def _after(self, step: str) -> None:
        if self.lost.get(step, 0) > 0:
            self.lost[step] -= 1
            raise transient(step)

    def _put(self, intent: PaymentIntent, **changes: object) -> PaymentIntent:
        self.intents[intent.id] = msgspec.structs.replace(intent, **changes)
        return self.intents[intent.id]

    async def authorize(self, purchase_id: str, amount_cents: int, token: str) -> PaymentIntent:
        self._before("authorize")
        if token == "tok_chargeDeclined":
            raise CardDeclined("declined", None)
        intent = PaymentIntent(id=f"pi_{len(self.intents) + 1}", status="requires_capture",
                               amount=amount_cents, amount_capturable=amount_cents,
                               metadata={"purchase_id": purchase_id})
        self._put(intent)
        self._after("authorize")
        return intent

    async def capture(self, purchase_id: str, intent_id: str) -> PaymentIntent:
        self._before("capture")
        i = self.intents[intent_id]
        done = self._put(i, status="succeeded", amount_capturable=0, amount_received=i.amount)
        self._after("capture")
        return done

    async def void(self, purchase_id: str, intent_id: str) -> PaymentIntent:
        self._before("void")
        return self._put(self.intents[intent_id], status="canceled", amount_capturable=0)

    async def refund(self, purchase_id: str, intent_id: str) -> Refund | None:
        self._before("refund")
        i = self.intents[intent_id]
        self._put(i, amount_refunded=i.amount_received)
        return Refund(id="re_1", payment_intent=i.id, amount=i.net_captured_cents, status="succeeded")

    async def retrieve(self, intent_id: str) -> PaymentIntent:
        return self.intents[intent_id]

    async def intents_for(self, purchase_id: str) -> list[PaymentIntent]:
        self._before("search")
        return list(self.intents.values())  # every intent: the worker keeps its purchase's own

    async def close(self) -> None:
        pass

    def charged_cents(self) -> int:
        return sum(i.net_captured_cents for i in self.intents.values())


class FakeJetStream:
    """js.publish: records (subject, payload); a subject in `stored` is refused as JetStream
    refuses a second message on a subject that keeps one."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.stored: set[str] = set()

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        if subject in self.stored:
            raise nats.js.errors.APIError(code=400, err_code=ERR_STORE_FAILED,
                                          description="maximum messages per subject exceeded")
        self.published.append((subject, payload))

    def intents(self) -> list[object]:
        return [intent_decoder.decode(p) for s, p in self.published if ".intents." in s]


class FakeDb:
    """The gateway's one read: a purchase's status."""

    def __init__(self, status: Status | None = "reserved") -> None:
        self.status = status

    async def fetchval(self, query: str, purchase_id: str) -> Status | None:
        return self.status


@pytest.fixture
async def parts() -> AsyncIterator[tuple[PaymentWorker, FakePsp, FakeJetStream, FakeDb]]:
    psp, js, db = FakePsp(), FakeJetStream(), FakeDb()
    yield PaymentWorker(SETTINGS, js, psp, db), psp, js, db  # type: ignore[arg-type]


async def test_a_reservation_is_authorized_captured_and_confirmed(parts):
    gw, psp, js, _ = parts
    assert await gw.settle(job()) == "confirmed"
    assert psp.calls == ["authorize", "capture"]
    assert js.intents() == [Confirm(PID, "pi_1", PRICE_CENTS)]
    assert js.published[0][0] == SETTINGS.names.intent(1, "confirm", PID)


@pytest.mark.parametrize("token", ["tok_chargeDeclined", None])
async def test_a_declined_or_missing_card_releases_the_stock(parts, token):
    gw, psp, js, _ = parts
    assert await gw.settle(job(token)) == "declined"
    assert js.intents() == [Release(PID, "payment_declined")]
    assert psp.charged_cents() == 0


@pytest.mark.parametrize("status", ["confirmed", "cancelled", "expired", "rejected", "pending"])
async def test_a_purchase_past_reserved_is_not_charged(parts, status):
    gw, psp, js, db = parts
    db.status = status
    assert await gw.settle(job()) == f"skipped_{status}"
    assert "authorize" not in psp.calls and js.published == []


async def test_a_closed_purchase_gets_back_what_an_interrupted_run_took(parts):
    gw, psp, js, db = parts
    await psp.authorize(PID, PRICE_CENTS, "tok_visa")
    await psp.capture(PID, "pi_1")  # an earlier run captured, then was killed
    db.status = "cancelled"
    assert await gw.settle(job()) == "skipped_cancelled"
    assert psp.charged_cents() == 0 and js.published == []


async def test_a_job_past_its_deadline_calls_no_psp(parts):
    gw, psp, js, _ = parts
    assert await gw.settle(job(ttl_ms=10)) == "skipped_expired"  # inside the start margin
    assert psp.calls == [] and js.published == []


async def test_an_authorization_whose_answers_were_all_lost_is_found_and_captured(parts):
    gw, psp, js, _ = parts
    psp.lost["authorize"] = 1
    psp.failing["authorize"] = 1  # the retry fails too: the round ends, the look-up finds it
    assert await gw.settle(job()) == "confirmed"
    assert psp.calls == ["authorize", "authorize", "search", "capture"]
    assert js.intents() == [Confirm(PID, "pi_1", PRICE_CENTS)]


async def test_a_capture_failing_to_the_deadline_voids_dead_letters_and_releases(parts):
    gw, psp, js, _ = parts
    psp.failing["capture"] = 10**6
    assert await gw.settle(job(ttl_ms=300)) == "failed"
    assert psp.intents["pi_1"].status == "canceled" and psp.charged_cents() == 0
    assert js.intents() == [Release(PID, "payment_failed")]
    letter = deadletter_decoder.decode(js.published[0][1])
    assert (letter.step, letter.job.id) == ("capture", PID)


async def test_a_purchase_closed_while_authorizing_is_voided_not_captured(parts):
    gw, psp, js, db = parts
    real_authorize = psp.authorize

    async def authorize_then_cancel(purchase_id: str, amount_cents: int, token: str) -> PaymentIntent:
        db.status = "cancelled"  # the buyer cancelled meanwhile
        return await real_authorize(purchase_id, amount_cents, token)

    psp.authorize = authorize_then_cancel  # type: ignore[method-assign]
    assert await gw.settle(job()) == "closed_before_capture"
    assert psp.intents["pi_1"].status == "canceled" and "capture" not in psp.calls
    assert js.published == []


async def test_a_confirm_already_sent_by_an_earlier_run_counts_as_sent(parts):
    gw, _, js, _ = parts
    js.stored.add(SETTINGS.names.intent(1, "confirm", PID))
    assert await gw.settle(job()) == "confirmed"


async def test_another_purchase_s_intent_is_never_captured_or_refunded(parts):
    gw, psp, js, db = parts
    other = "p_" + "2" * 30
    await psp.authorize(other, PRICE_CENTS, "tok_visa")
    await psp.capture(other, "pi_1")
    db.status = "expired"
    assert await gw.settle(job()) == "skipped_expired"
    assert psp.intents["pi_1"].net_captured_cents == PRICE_CENTS  # untouched
    assert js.published == []


async def test_a_refused_confirm_is_refunded_and_a_confirmed_one_is_not(parts):
    gw, psp, _, _ = parts
    await psp.authorize(PID, PRICE_CENTS, "tok_visa")
    await psp.capture(PID, "pi_1")
    kept = ResultBatch(shard=1, epoch=1, refusals=[Refusal("confirm", PID, "not_reserved", "confirmed")])
    await gw.compensate(kept)
    assert psp.charged_cents() == PRICE_CENTS
    refused = ResultBatch(shard=1, epoch=1, refusals=[Refusal("confirm", PID, "not_reserved", "expired")])
    await gw.compensate(refused)
    assert psp.charged_cents() == 0


async def test_an_order_s_money_is_never_compensated(parts):
    gw, _, _, _ = parts
    with pytest.raises(AssertionError):
        await gw._compensate_purchase(PID, "confirmed", "unit test")


class FakeJobMsg:
    """A payment job as delivered: what was sent before its ack, nak or term."""

    def __init__(self, js: FakeJetStream, data: bytes) -> None:
        self.js = js
        self.data = data
        self.subject = "unit.payments.1"
        self.acked_after: list[object] | None = None
        self.naks = 0
        self.terms = 0

    async def ack(self) -> None:
        self.acked_after = self.js.intents()

    async def nak(self, delay: float | None = None) -> None:
        self.naks += 1

    async def term(self) -> None:
        self.terms += 1

    async def in_progress(self) -> None:
        pass


async def test_a_job_is_acked_only_after_its_confirm_is_sent(parts):
    gw, _, js, _ = parts
    msg = FakeJobMsg(js, encode(job()))
    await consumers.on_job(gw, msg)
    assert msg.acked_after is not None and [type(i) for i in msg.acked_after] == [Confirm]
    assert msg.naks == 0


async def test_a_job_that_fails_is_handed_back_not_acked(parts):
    gw, psp, js, _ = parts
    psp.failing["search"] = 10**6  # a job of a closed purchase needs a search: it never answers
    gw.db.status = "cancelled"
    msg = FakeJobMsg(js, encode(job()))
    await consumers.on_job(gw, msg)
    assert (msg.acked_after, msg.naks) == (None, 1)


async def test_an_undecodable_job_is_terminated(parts):
    gw, _, js, _ = parts
    msg = FakeJobMsg(js, b"\xc1")
    await consumers.on_job(gw, msg)
    assert (msg.terms, msg.acked_after, msg.naks) == (1, None, 0)
