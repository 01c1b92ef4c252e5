"""The payment worker: reservation in, money moved (or not), confirm/release back to the shard.

Crash safety comes from ordering, not from local state:
1. every PSP call uses an idempotency key derived from the purchase id, so running a job twice
   (redelivery after a crash, two gateways racing) replays the first results instead of
   charging again;
2. the confirm/release intent is published before the job is acked, and the intents stream keeps
   one message per (purchase, kind) forever, so a second publish is refused by the server
   (err 10077) and treated as "already sent";
3. a job that is never acked is redelivered by JetStream after `payment_ack_wait_s`.
A capture whose confirm the committer refuses (reservation expired meanwhile) is refunded when
the refusal comes back on the results stream; anything that still slips through (a capture whose
answer was lost on every retry) is found by reconciliation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Literal, cast

import asyncpg
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from config.settings import Settings
from flashsale.logs import kv
from gateway.messages import DeadLetter, PspStep, encode_deadletter
from gateway.metrics import COMPENSATIONS, DEADLETTERS
from gateway.psp import CardDeclined, GiveUp, PaymentIntent, PaymentProvider, PspError, backoff_s, retrying
from proto.clock import now_ms
from proto.messages import (
    Confirm,
    PaymentJob,
    Release,
    ResultBatch,
    Status,
    encode,
)
from proto.streams import is_already_stored

log = logging.getLogger("gateway.worker")


PUBLISH_ATTEMPTS_MAX = 5
DEADLETTER_ERROR_MAX_CHARS = 500  # of the PSP's error text kept in a dead letter

# How one payment job ended (the label of gateway_jobs_total).
Outcome = Literal[
    "confirmed", "declined", "failed", "closed_before_capture", "skipped_expired",
    "skipped_pending", "skipped_confirmed", "skipped_rejected", "skipped_cancelled",
]
# A job whose purchase is already past `reserved` is skipped; `reserved` itself is charged.
SKIPPED: Mapping[Status, Outcome] = {
    "pending": "skipped_pending", "confirmed": "skipped_confirmed", "rejected": "skipped_rejected",
    "expired": "skipped_expired", "cancelled": "skipped_cancelled",
}


class PaymentWorker:
    """Settles payment jobs (one reservation each) and refunds refused confirms; as many run
    as there are gateway processes, sharing the durable consumers."""

    def __init__(self, settings: Settings, js: JetStreamContext, psp: PaymentProvider,
                 db: asyncpg.Pool | None = None) -> None:
        self.settings = settings
        self.names = settings.names
        self.js = js
        self.psp = psp
        self.db = db  # read-only: is the reservation still open before we charge it?

    # -- one payment job -----------------------------------------------------------------------

    async def settle(self, job: PaymentJob) -> Outcome:
        """Charge for one reservation and tell its shard. Returns the outcome (for metrics)."""
        status = await self._purchase_status(job.id)
        skipped = SKIPPED.get(status) if status is not None else None
        if skipped is not None:
            # Cancelled by the buyer, or settled by an earlier run of this job: charge nothing,
            # and give back whatever an earlier run cut short (killed after capture) took.
            if status != "confirmed":
                await self._compensate_purchase(job.id, status, "closed_before_charge")
            return skipped
        # Money moves only for an open reservation (or one whose state cannot be read).
        assert status in (None, "reserved"), (job.id, status)
        if now_ms() >= self.charge_by_ms(job):
            # The committer expires it on its own; charging now would only be refunded.
            log.info("job expired before charging", extra=kv(purchase_id=job.id))
            return "skipped_expired"
        token = job.payment_token
        if not token:
            await self._publish_intent(job.shard, Release(job.id, "payment_declined"))
            return "declined"
        paid = await self._pay(job, token)
        if isinstance(paid, str):
            return paid
        if paid.status != "succeeded" or paid.amount_received <= 0:
            await self._give_up(job, GiveUp("capture", "psp_rejected",
                                            f"unexpected intent status {paid.status}", 1))
            return "failed"
        # An order is confirmed only with money captured, by an intent of this very purchase.
        assert paid.status == "succeeded" and paid.amount_received > 0 and paid.id
        assert paid.purchase_id in (None, job.id), (paid.id, paid.purchase_id, job.id)
        await self._publish_intent(job.shard, Confirm(job.id, paid.id, paid.amount_received))
        return "confirmed"

    async def _pay(self, job: PaymentJob, token: str) -> PaymentIntent | Outcome:
        """Authorize the reservation's amount, then capture it: the PSP's intent, or how the
        job ended without one (the release is sent)."""
        try:
            intent = await self._until_charge_by(
                job, "authorize", lambda: self.psp.authorize(job.id, job.amount_cents, token),
                happened=lambda found: True)
        except CardDeclined:
            await self._publish_intent(job.shard, Release(job.id, "payment_declined"))
            return "declined"
        except GiveUp as e:
            await self._give_up(job, e)
            return "failed"
        # What the PSP holds is this purchase's, and exactly what the reservation costs.
        assert intent.purchase_id in (None, job.id), (intent.id, intent.purchase_id, job.id)
        assert intent.amount == job.amount_cents, (intent.id, intent.amount, job.amount_cents)
        if intent.status != "requires_capture":
            return intent  # captured already (a replay of an earlier run), or unexpected
        if now_ms() >= job.expires_at_ms or await self._purchase_status(job.id) not in (None, "reserved"):
            # Stock is already back on sale: let go of the hold instead of capturing.
            await self._void_quietly(job.id, intent)
            return "closed_before_capture"
        authorized = intent
        try:
            return await self._until_charge_by(
                job, "capture", lambda: self.psp.capture(job.id, authorized.id),
                happened=lambda found: found.status == "succeeded")
        except GiveUp as e:
            # Frees the buyer's hold now. Should a capture still land after this (one stuck
            # at the PSP), the void fails and reconciliation refunds it.
            await self._void_quietly(job.id, authorized)
            await self._give_up(job, e)
            return "failed"

    def charge_by_ms(self, job: PaymentJob) -> int:
        """The last moment to send a PSP call for this reservation: its deadline less the margin
        the capture and the confirm need to land before the committer expires it."""
        return job.expires_at_ms - int(self.settings.payment_start_margin_s * 1000)

    async def _until_charge_by(self, job: PaymentJob, step: PspStep,
                               call: Callable[[], Awaitable[PaymentIntent]],
                               happened: Callable[[PaymentIntent], bool]) -> PaymentIntent:
        """One payment step, as long as the reservation can still be honoured: rounds of
        `retrying` (`payment_attempts_max` sends each), each round that ends in transient failures
        followed by a look-up, since every answer may have been lost while the PSP did the work.
        A PSP outage is ridden out this way until `charge_by_ms`; GiveUp once that passed, or on
        a final error with nothing found."""
        charge_by_ms = self.charge_by_ms(job)
        while True:
            try:
                return await retrying(self.settings, step, call, deadline_ms=charge_by_ms)
            except GiveUp as e:
                found = await self._look_up(job.id)
                if found is not None and happened(found):
                    return found
                if e.reason != "retry_budget_exhausted":
                    raise
                log.info("psp still failing, retrying until the reservation's deadline",
                         extra=kv(purchase_id=job.id, step=step, charge_by_ms=charge_by_ms,
                                  error=e.error))

    async def _purchase_status(self, purchase_id: str) -> Status | None:
        if self.db is None:
            return None
        try:
            status = await self.db.fetchval("SELECT status FROM purchases WHERE id = $1", purchase_id)
        except (asyncpg.PostgresError, OSError) as e:
            # Can't tell: go on. A confirm for a closed purchase is refused and refunded anyway.
            log.warning("purchase status unavailable", extra=kv(purchase_id=purchase_id, error=str(e)))
            return None
        # The column's CHECK constraint holds it to the Status values (NULL: no such purchase).
        return cast("Status | None", status)

    async def _look_up(self, purchase_id: str) -> PaymentIntent | None:
        """The purchase's authorized or captured intent at the PSP, if any (a read: the PSP's
        lost answers and stuck requests hit its writes)."""
        try:
            intents = await self._intents_of(purchase_id)
        except GiveUp:
            return None
        live = [i for i in intents if i.status in ("requires_capture", "succeeded")]
        # Only our own authorize key creates intents for a purchase in normal operation, so
        # there is at most one; prefer a capture should there ever be more.
        live.sort(key=lambda i: i.status != "succeeded")
        found = live[0] if live else None
        assert found is None or found.purchase_id == purchase_id, (purchase_id, found)
        return found

    async def _intents_of(self, purchase_id: str) -> list[PaymentIntent]:
        """The PSP's intents for the purchase, by its search (retried). Only the ones whose
        metadata names this purchase: money is never moved on another purchase's intent, should
        a search ever answer more than it was asked."""
        found = await retrying(self.settings, "search", lambda: self.psp.intents_for(purchase_id))
        return [i for i in found if i.purchase_id == purchase_id]

    async def _void_quietly(self, purchase_id: str, intent: PaymentIntent) -> None:
        # Only this purchase's hold is ever let go.
        assert intent.purchase_id in (None, purchase_id), (intent.id, intent.purchase_id, purchase_id)
        try:
            await retrying(self.settings, "void", lambda: self.psp.void(purchase_id, intent.id))
        except (GiveUp, PspError) as e:
            log.warning("void failed; reconciliation will settle it",
                        extra=kv(purchase_id=purchase_id, psp_ref=intent.id, error=str(e)))

    async def _give_up(self, job: PaymentJob, e: GiveUp) -> None:
        DEADLETTERS.labels(e.reason).inc()
        log.warning("payment failed, dead-lettering and releasing",
                    extra=kv(purchase_id=job.id, step=e.step, reason=e.reason, attempts=e.attempts,
                             error=e.error))
        letter = DeadLetter(job=job, reason=e.reason, step=e.step, error=e.error[:DEADLETTER_ERROR_MAX_CHARS],
                            attempts=e.attempts, at_ms=now_ms())
        await self._publish(self.names.deadletter(), encode_deadletter(letter),
                            headers={"Nats-Msg-Id": f"deadletter:{job.id}"})
        await self._publish_intent(job.shard, Release(job.id, "payment_failed"))

    async def _publish_intent(self, shard: int, intent: Confirm | Release) -> None:
        kind = "confirm" if isinstance(intent, Confirm) else "release"
        try:
            await self._publish(self.names.intent(shard, kind, intent.id), encode(intent))
        except nats.js.errors.APIError as e:
            if not is_already_stored(e.err_code or 0, e.description or ""):
                raise
            # A previous run of this job already sent it (the stream keeps one per subject).
            log.info("intent already sent", extra=kv(purchase_id=intent.id, kind=kind))

    async def _publish(self, subject: str, payload: bytes,
                       headers: dict[str, str] | None = None) -> None:
        for attempt in range(1, PUBLISH_ATTEMPTS_MAX + 1):
            try:
                await self.js.publish(subject, payload, headers=headers)
                return
            except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError,
                    nats.errors.ConnectionReconnectingError):
                if attempt == PUBLISH_ATTEMPTS_MAX:
                    raise
                await asyncio.sleep(backoff_s(attempt, self.settings.payment_backoff_base_s,
                                              self.settings.payment_backoff_max_s))

    # -- refused confirms ---------------------------------------------------------------------

    async def compensate(self, batch: ResultBatch) -> None:
        """Give the money back for every confirm the committer refused (reservation gone)."""
        for refusal in batch.refusals:
            if refusal.kind != "confirm" or refusal.status == "confirmed":
                continue
            await self._compensate_purchase(refusal.key, refusal.status, "confirm_refused")

    async def _compensate_purchase(self, purchase_id: str, status: Status | None, why: str) -> None:
        """Refund every capture and void every hold of a purchase that is not an order."""
        # An order's money is never given back: callers skip confirmed purchases.
        assert status != "confirmed", purchase_id
        for intent in await self._intents_of(purchase_id):
            # Money goes back only from this purchase's own intents (_intents_of filters).
            assert intent.purchase_id == purchase_id, (intent.id, intent.purchase_id, purchase_id)
            if intent.net_captured_cents > 0:
                await retrying(self.settings, "refund", partial(self.psp.refund, purchase_id, intent.id))
                COMPENSATIONS.labels("refund").inc()
                log.info("refunded", extra=kv(purchase_id=purchase_id, psp_ref=intent.id, status=status,
                                              why=why, amount_cents=intent.net_captured_cents))
            elif intent.status == "requires_capture":
                await retrying(self.settings, "void", partial(self.psp.void, purchase_id, intent.id))
                COMPENSATIONS.labels("void").inc()
                log.info("voided", extra=kv(purchase_id=purchase_id, psp_ref=intent.id, status=status,
                                            why=why))
