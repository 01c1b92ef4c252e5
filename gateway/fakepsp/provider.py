"""The fake provider's state and operations: a ledger, idempotency keys, counters and chaos.

Stripe semantics kept on purpose, because the gateway's correctness depends on them:
- `Idempotency-Key`: the first result of a key is stored (402 declines included, 5xx not) and
  replayed for the same parameters; other parameters -> 400 `idempotency_error`; a retry while
  the first request is still running -> 409 `idempotency_key_in_use`;
- PaymentIntent states requires_confirmation -> requires_capture (manual capture) / succeeded,
  requires_payment_method after a decline, canceled after a void.

Failure knobs (per mutating request, never for tok_visa / tok_chargeDeclined):
- timeout: the request hangs `hang_s` (past the client's timeout), then does the work anyway;
- lost: the work is done and stored under the idempotency key, then the answer is lost
  (connection dropped or a 500), which is the case that double-charges a naive client.
Declines are rolled once per authorization, so a replay can never turn a decline into a charge.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgspec
from aiohttp import web

from gateway.fakepsp.config import FakePspConfig
from gateway.fakepsp.errors import ApiError, error_response, int_param
from gateway.fakepsp.ledger import Ledger

TOKEN_ALWAYS_OK = "tok_visa"
TOKEN_ALWAYS_DECLINED = "tok_chargeDeclined"

Chaos = Literal["ok", "timeout", "lost"]
Outcome = tuple[int, dict[str, Any]]  # (HTTP status, Stripe-shaped body)


class StoredResponse(msgspec.Struct):
    fingerprint: str
    status: int | None = None  # None while the first request is still running
    body: dict[str, Any] | None = None


def _now_s() -> int:
    return int(time.time())


def _metadata(params: dict[str, str]) -> dict[str, str]:
    """`metadata[key]=value` form fields as {key: value}."""
    return {k[len("metadata["):-1]: v for k, v in params.items() if k.startswith("metadata[")}


def _fingerprint(request: web.Request, params: dict[str, str]) -> str:
    """What a replay of an idempotency key must match: the same call with the same parameters."""
    return hashlib.sha256(
        json.dumps([request.method, request.path, sorted(params.items())]).encode()
    ).hexdigest()


class FakePsp:
    def __init__(self, config: FakePspConfig) -> None:
        self.config = config
        self.rates = config.rates
        self.auth_header = f"Bearer {config.api_key}".encode()
        self.random = random.Random(config.seed)
        self.ledger = Ledger()
        self.idempotency: OrderedDict[str, StoredResponse] = OrderedDict()
        self.stats: dict[str, int] = {}
        self._dirty = False
        if config.ledger_path and Path(config.ledger_path).exists():
            data = json.loads(Path(config.ledger_path).read_text())
            self.ledger = Ledger.restore(data)
            for key, stored in data.get("idempotency", {}).items():
                self.idempotency[key] = msgspec.convert(stored, StoredResponse)

    def count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

    # -- chaos ---------------------------------------------------------------------------------

    def _roll_chaos(self, token: str | None) -> Chaos:
        if token in (TOKEN_ALWAYS_OK, TOKEN_ALWAYS_DECLINED):
            return "ok"
        r = self.random.random()
        if r < self.rates.timeout_rate:
            return "timeout"
        if r < self.rates.timeout_rate + self.rates.lost_rate:
            return "lost"
        return "ok"

    def _declines(self, token: str | None) -> bool:
        if token == TOKEN_ALWAYS_OK:
            return False
        if token == TOKEN_ALWAYS_DECLINED:
            return True
        return self.random.random() < self.rates.decline_rate

    # -- operations (synchronous: each one is atomic with respect to the event loop) ----------

    def create_intent(self, params: dict[str, str]) -> Outcome:
        try:
            amount = int(params["amount"])
        except (KeyError, ValueError):
            raise ApiError(400, "invalid_request_error", "amount must be a positive integer",
                           param="amount") from None
        if amount <= 0:
            raise ApiError(400, "invalid_request_error", "amount must be a positive integer",
                           param="amount")
        capture_method = params.get("capture_method", "automatic")
        if capture_method not in ("automatic", "manual"):
            raise ApiError(400, "invalid_request_error", "bad capture_method", param="capture_method")
        pi = _new_intent(params, amount, capture_method)
        self.ledger.add_intent(pi)
        self.count("intents_created")
        if params.get("confirm") == "true":
            return self._confirm(pi)
        return 200, pi

    def confirm_intent(self, pi_id: str, params: dict[str, str]) -> Outcome:
        pi = self.ledger.get(pi_id)
        if params.get("payment_method"):
            pi["payment_method"] = params["payment_method"]
        return self._confirm(pi)

    def _confirm(self, pi: dict[str, Any]) -> Outcome:
        confirmable = pi["status"] in ("requires_confirmation", "requires_payment_method")
        if not confirmable or not pi["payment_method"]:
            raise self._unexpected_state(pi, "confirm")
        if self._declines(pi["payment_method"]):
            pi["status"] = "requires_payment_method"
            pi["last_payment_error"] = {"code": "card_declined", "decline_code": "generic_decline"}
            self.count("declines")
            raise ApiError(402, "card_error", "Your card was declined.", code="card_declined",
                           decline_code="generic_decline", payment_intent=dict(pi))
        if pi["capture_method"] == "manual":
            pi["status"] = "requires_capture"
            pi["amount_capturable"] = pi["amount"]
            self.count("authorizations")
        else:
            pi["status"] = "succeeded"
            pi["amount_received"] = pi["amount"]
            self.count("captures")
        return 200, pi

    def capture_intent(self, pi_id: str, params: dict[str, str]) -> Outcome:
        pi = self.ledger.get(pi_id)
        if pi["status"] != "requires_capture":
            raise self._unexpected_state(pi, "capture")
        amount = int_param(params, "amount_to_capture", pi["amount_capturable"])
        if not 0 < amount <= pi["amount_capturable"]:
            raise ApiError(400, "invalid_request_error", "bad amount_to_capture",
                           param="amount_to_capture")
        pi["status"] = "succeeded"
        pi["amount_received"] = amount
        pi["amount_capturable"] = 0
        self.count("captures")
        return 200, pi

    def cancel_intent(self, pi_id: str, params: dict[str, str]) -> Outcome:
        pi = self.ledger.get(pi_id)
        if pi["status"] not in ("requires_payment_method", "requires_confirmation", "requires_capture"):
            raise self._unexpected_state(pi, "cancel")
        pi["status"] = "canceled"
        pi["amount_capturable"] = 0
        pi["cancellation_reason"] = params.get("cancellation_reason")
        self.count("voids")
        return 200, pi

    def create_refund(self, params: dict[str, str]) -> Outcome:
        pi = self.ledger.get(params.get("payment_intent", ""))
        remaining = pi["amount_received"] - pi["amount_refunded"]
        if pi["status"] != "succeeded" or remaining <= 0:
            raise ApiError(400, "invalid_request_error", "This charge has already been refunded "
                           "or was never captured.", code="charge_already_refunded")
        amount = int_param(params, "amount", remaining)
        if not 0 < amount <= remaining:
            raise ApiError(400, "invalid_request_error", "bad refund amount", param="amount")
        pi["amount_refunded"] += amount
        refund = {
            "id": "re_" + secrets.token_hex(12),
            "object": "refund",
            "amount": amount,
            "payment_intent": pi["id"],
            "status": "succeeded",
            "reason": params.get("reason"),
            "metadata": _metadata(params),
            "created": _now_s(),
        }
        self.ledger.refunds[refund["id"]] = refund
        self.count("refunds")
        return 200, refund

    def forget_intent(self, pi_id: str) -> dict[str, Any] | None:
        """Drops an intent from the ledger (admin only: "confirmed purchase without a capture")."""
        pi = self.ledger.forget_intent(pi_id)
        if pi is not None:
            self._dirty = True
        return pi

    @staticmethod
    def _unexpected_state(pi: dict[str, Any], action: str) -> ApiError:
        return ApiError(400, "invalid_request_error",
                        f"You cannot {action} this PaymentIntent because it has a status of "
                        f"{pi['status']}.", code="payment_intent_unexpected_state",
                        payment_intent=dict(pi))

    # -- idempotency + chaos around one mutating request ---------------------------------------

    async def run_mutation(self, request: web.Request, params: dict[str, str], token: str | None,
                           op: Callable[[], Outcome]) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key")
        chaos = self._roll_chaos(token)
        fingerprint = _fingerprint(request, params)
        if key is not None:
            stored = self.idempotency.get(key)
            if stored is not None:
                return await self._replay(request, stored, fingerprint, chaos)
            self._hold_key(key, fingerprint)
        status, body = await self._run_once(key, chaos, op)
        self._dirty = True
        if key is not None:
            self.idempotency[key] = StoredResponse(fingerprint, status, body)
        if chaos == "lost":
            return self._lose(request)
        return web.json_response(body, status=status)

    async def _replay(self, request: web.Request, stored: StoredResponse, fingerprint: str,
                      chaos: Chaos) -> web.StreamResponse:
        if stored.fingerprint != fingerprint:
            self.count("idempotency_mismatch")
            return error_response(400, "idempotency_error", "Keys for idempotent requests can only "
                                  "be used with the same parameters they were first used with.")
        if stored.status is None:
            self.count("idempotency_in_use")
            return error_response(409, "idempotency_error", "There is currently another in-progress "
                                  "request using this Idempotency Key. Try again later.",
                                  code="idempotency_key_in_use")
        self.count("idempotent_replays")
        # Replays get lost and stuck like any other answer.
        if chaos == "timeout":
            self.count("timeouts")
            await asyncio.sleep(self.rates.hang_s)
        elif chaos == "lost":
            return self._lose(request)
        return web.json_response(stored.body, status=stored.status,
                                 headers={"Idempotent-Replayed": "true"})

    def _hold_key(self, key: str, fingerprint: str) -> None:
        """Marks the key in use until the first request's answer is stored."""
        self.idempotency[key] = StoredResponse(fingerprint)
        while len(self.idempotency) > self.config.idempotency_keys_max:
            self.idempotency.popitem(last=False)

    async def _run_once(self, key: str | None, chaos: Chaos, op: Callable[[], Outcome]) -> Outcome:
        try:
            if chaos == "timeout":
                self.count("timeouts")
                # The client gives up long before this; the work still happens afterwards, as
                # it does at a real PSP whose reply got stuck.
                await asyncio.sleep(self.rates.hang_s)
            try:
                return op()
            except ApiError as e:
                return e.status, e.body
        except BaseException:
            # Nothing was stored (5xx, cancelled): the key is free for a retry.
            if key is not None:
                self.idempotency.pop(key, None)
            raise

    def _lose(self, request: web.Request) -> web.Response:
        self.count("lost_responses")
        if self.random.random() < 0.5 and request.transport is not None:
            request.transport.close()  # the client sees a dropped connection
        return error_response(500, "api_error", "An unknown error occurred.")

    # -- the ledger file -----------------------------------------------------------------------

    async def flush_forever(self, interval_s: float = 0.5) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.flush()

    def flush(self) -> None:
        if not self.config.ledger_path or not self._dirty:
            return
        self._dirty = False
        path = Path(self.config.ledger_path)
        tmp = path.with_suffix(".tmp")
        data = self.ledger.snapshot()
        data["idempotency"] = {k: msgspec.to_builtins(v) for k, v in self.idempotency.items()}
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)


def _new_intent(params: dict[str, str], amount: int, capture_method: str) -> dict[str, Any]:
    payment_method = params.get("payment_method")
    return {
        "id": "pi_" + secrets.token_hex(12),
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_received": 0,
        "amount_refunded": 0,
        "currency": params.get("currency", "usd"),
        "capture_method": capture_method,
        "payment_method": payment_method,
        "metadata": _metadata(params),
        "status": "requires_confirmation" if payment_method else "requires_payment_method",
        "created": _now_s(),
        "last_payment_error": None,
    }


PSP_KEY = web.AppKey("psp", FakePsp)
