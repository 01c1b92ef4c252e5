"""The PSP adapter: a small interface the gateway and reconciliation use, and its Stripe-style
HTTP implementation.

Every mutating call carries an idempotency key derived from the purchase id and the step, so a
retry, a redelivered job or a restarted gateway replays the first result instead of charging
again. Errors are sorted into transient (retry with the same key) and final (act on them).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal, Protocol, TypeVar

import aiohttp
import msgspec

from config.settings import Settings
from flashsale.logs import kv
from gateway.messages import GiveUpReason, PspStep
from gateway.metrics import PSP_CALLS, PSP_RETRIES, PSP_SECONDS
from proto.clock import now_ms

log = logging.getLogger("gateway.psp")
T = TypeVar("T")

IntentStatus = Literal[
    "requires_payment_method", "requires_confirmation", "requires_action", "processing",
    "requires_capture", "canceled", "succeeded",
]


class PaymentIntent(msgspec.Struct, kw_only=True):
    """The subset of a Stripe PaymentIntent the gateway reads (unknown fields are ignored)."""

    id: str
    status: IntentStatus
    amount: int
    currency: str = "usd"
    amount_capturable: int = 0
    amount_received: int = 0
    amount_refunded: int = 0  # fake PSP extension; on Stripe it lives on the charge
    created: int = 0  # epoch seconds
    metadata: dict[str, str] = {}

    @property
    def purchase_id(self) -> str | None:
        return self.metadata.get("purchase_id")

    @property
    def net_captured_cents(self) -> int:
        return self.amount_received - self.amount_refunded


class Refund(msgspec.Struct, kw_only=True):
    id: str
    payment_intent: str
    amount: int
    status: str


class _ErrorBody(msgspec.Struct):
    type: str = "api_error"
    message: str = ""
    code: str | None = None
    decline_code: str | None = None
    payment_intent: PaymentIntent | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody


class IntentList(msgspec.Struct):
    """A page of intents (list and search answers)."""

    data: list[PaymentIntent]
    has_more: bool = False


class PspError(Exception):
    """A PSP call failed. `transient`: the same call with the same key may still succeed."""

    def __init__(self, message: str, *, transient: bool, code: str | None = None,
                 http_status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.code = code
        self.http_status = http_status


class CardDeclined(PspError):
    def __init__(self, message: str, payment_intent: PaymentIntent | None) -> None:
        super().__init__(message, transient=False, code="card_declined", http_status=402)
        self.payment_intent = payment_intent


class PaymentProvider(Protocol):
    async def authorize(self, purchase_id: str, amount_cents: int, token: str) -> PaymentIntent:
        """Create and confirm a manual-capture intent. Raises CardDeclined."""

    async def capture(self, purchase_id: str, intent_id: str) -> PaymentIntent: ...

    async def void(self, purchase_id: str, intent_id: str) -> PaymentIntent:
        """Release an authorization that was never captured."""

    async def refund(self, purchase_id: str, intent_id: str) -> Refund | None:
        """Refund everything still captured on the intent; None if nothing was left."""

    async def retrieve(self, intent_id: str) -> PaymentIntent: ...

    async def intents_for(self, purchase_id: str) -> list[PaymentIntent]: ...

    def ledger(self, page_size: int = 100) -> AsyncIterator[PaymentIntent]: ...

    async def close(self) -> None: ...


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random = random._inst) -> float:
    """Full jitter (sleep uniformly in [0, min(max, base * 2**attempt)]): retries from many
    jobs that failed together spread out instead of hammering the PSP in lock-step."""
    return rng.uniform(0, min(max_s, base_s * (2 ** attempt)))


class GiveUp(Exception):
    """A PSP step that failed for good: a final error, or transient ones until the budget ran out."""

    def __init__(self, step: PspStep, reason: GiveUpReason, error: str, attempts: int) -> None:
        super().__init__(f"{step}: {reason} after {attempts} attempts: {error}")
        self.step = step
        self.reason = reason
        self.error = error
        self.attempts = attempts


async def retrying(settings: Settings, step: PspStep, call: Callable[[], Awaitable[T]],
                   deadline_ms: int | None = None) -> T:
    """The call, sent again with the same idempotency key while the PSP's failure is transient (a
    lost answer, a timeout, the key still in use, the PSP down): at most `payment_attempts_max`
    sends (one round: the worker runs rounds until a reservation's deadline), paced by
    `backoff_s`, none that would wait past `deadline_ms`. CardDeclined passes through (the caller
    acts on it); any other failure ends as GiveUp."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except CardDeclined:
            raise
        except PspError as e:
            if not e.transient:
                raise GiveUp(step, "psp_rejected", str(e), attempt) from e
            if attempt >= settings.payment_attempts_max:
                raise GiveUp(step, "retry_budget_exhausted", str(e), attempt) from e
            delay_s = backoff_s(attempt - 1, settings.payment_backoff_base_s, settings.payment_backoff_max_s)
            if deadline_ms is not None and now_ms() + delay_s * 1000 >= deadline_ms:
                raise GiveUp(step, "expired_while_retrying", str(e), attempt) from e
            PSP_RETRIES.labels(step).inc()
            log.info("psp transient failure, retrying",
                     extra=kv(step=step, attempt=attempt, delay_s=round(delay_s, 3), error=str(e)))
            await asyncio.sleep(delay_s)


def idempotency_key(purchase_id: str, step: str, intent_id: str | None = None) -> str:
    # One key per (purchase, step[, intent]) so a replay of any step returns that step's first
    # result; refunds and voids name the intent because one purchase may have two captures.
    return f"{purchase_id}:{step}" if intent_id is None else f"{purchase_id}:{step}:{intent_id}"


# Of an error answer that is not Stripe-shaped JSON, what is kept as its message.
ERROR_BODY_MAX_CHARS = 200
# The PSP's error code for a step the intent's state does not allow (captured, voided already).
UNEXPECTED_STATE = "payment_intent_unexpected_state"
_PATH = {"capture": "capture", "void": "cancel"}  # /v1/payment_intents/{id}/<path>

_intent_decoder = msgspec.json.Decoder(PaymentIntent)
_refund_decoder = msgspec.json.Decoder(Refund)
_error_decoder = msgspec.json.Decoder(_ErrorEnvelope)
_list_decoder = msgspec.json.Decoder(IntentList)


class StripeLikePsp:
    """PaymentProvider over a Stripe-compatible HTTP API (the fake PSP speaks it)."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float, currency: str = "usd",
                 connections_max: int = 100) -> None:
        self.base_url = base_url.rstrip("/")
        self.currency = currency
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            connector=aiohttp.TCPConnector(limit=connections_max),
        )

    async def close(self) -> None:
        await self.session.close()

    async def _call(self, op: str, method: str, path: str, *, data: dict[str, str] | None = None,
                    params: dict[str, str] | None = None, key: str | None = None) -> bytes:
        headers = {"Idempotency-Key": key} if key else {}
        started = time.perf_counter()
        try:
            async with self.session.request(method, self.base_url + path, data=data,
                                            params=params, headers=headers) as resp:
                body = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as e:
            PSP_CALLS.labels(op, "transport_error").inc()
            raise PspError(f"{op}: {type(e).__name__}: {e}", transient=True) from e
        finally:
            PSP_SECONDS.labels(op).observe(time.perf_counter() - started)
        if status < 300:
            PSP_CALLS.labels(op, "ok").inc()
            return body
        try:
            err = _error_decoder.decode(body).error
        except msgspec.DecodeError:
            err = _ErrorBody(message=body[:ERROR_BODY_MAX_CHARS].decode(errors="replace"))
        if status == 402 and err.type == "card_error":
            PSP_CALLS.labels(op, "declined").inc()
            raise CardDeclined(err.message, err.payment_intent)
        # 409: the first request with this key is still running; 429/5xx: the PSP is struggling.
        transient = status in (409, 429) or status >= 500
        PSP_CALLS.labels(op, "transient" if transient else "error").inc()
        raise PspError(f"{op}: HTTP {status} {err.type}: {err.message}", transient=transient,
                       code=err.code, http_status=status)

    async def authorize(self, purchase_id: str, amount_cents: int, token: str) -> PaymentIntent:
        body = await self._call("authorize", "POST", "/v1/payment_intents", data={
            "amount": str(amount_cents),
            "currency": self.currency,
            "payment_method": token,
            "capture_method": "manual",
            "confirm": "true",
            "metadata[purchase_id]": purchase_id,
        }, key=idempotency_key(purchase_id, "authorize"))
        return _intent_decoder.decode(body)

    async def capture(self, purchase_id: str, intent_id: str) -> PaymentIntent:
        return await self._settle(intent_id, "capture", "succeeded", {},
                                  idempotency_key(purchase_id, "capture"))

    async def void(self, purchase_id: str, intent_id: str) -> PaymentIntent:
        return await self._settle(intent_id, "void", "canceled", {"cancellation_reason": "abandoned"},
                                  idempotency_key(purchase_id, "void", intent_id))

    async def _settle(self, intent_id: str, step: Literal["capture", "void"], settled: IntentStatus,
                      data: dict[str, str], key: str) -> PaymentIntent:
        """The step that takes an authorized intent to `settled`. Should the PSP find the intent
        in another state (it forgot the key, and this step or another already settled it), the
        intent's state is the truth: already `settled` is this step's success."""
        try:
            body = await self._call(step, "POST", f"/v1/payment_intents/{intent_id}/{_PATH[step]}",
                                    data=data, key=key)
        except PspError as e:
            if e.code == UNEXPECTED_STATE:
                intent = await self.retrieve(intent_id)
                if intent.status == settled:
                    return intent
            raise
        return _intent_decoder.decode(body)

    async def refund(self, purchase_id: str, intent_id: str) -> Refund | None:
        # No amount: "refund whatever is still captured", so the same key always means the same
        # request, whoever (worker or reconciliation) sends it first.
        try:
            body = await self._call("refund", "POST", "/v1/refunds", data={
                "payment_intent": intent_id,
                "reason": "requested_by_customer",
                "metadata[purchase_id]": purchase_id,
            }, key=idempotency_key(purchase_id, "refund", intent_id))
        except PspError as e:
            if e.code == "charge_already_refunded":
                return None
            raise
        return _refund_decoder.decode(body)

    async def retrieve(self, intent_id: str) -> PaymentIntent:
        return _intent_decoder.decode(await self._call("retrieve", "GET",
                                                       f"/v1/payment_intents/{intent_id}"))

    async def intents_for(self, purchase_id: str) -> list[PaymentIntent]:
        body = await self._call("search", "GET", "/v1/payment_intents/search",
                                params={"query": f"metadata['purchase_id']:'{purchase_id}'"})
        return _list_decoder.decode(body).data

    async def ledger(self, page_size: int = 100) -> AsyncIterator[PaymentIntent]:
        after: str | None = None
        while True:
            params = {"limit": str(page_size)}
            if after:
                params["starting_after"] = after
            page = _list_decoder.decode(await self._call("list", "GET", "/v1/payment_intents",
                                                         params=params))
            for intent in page.data:
                yield intent
            if not page.has_more or not page.data:
                return
            after = page.data[-1].id
