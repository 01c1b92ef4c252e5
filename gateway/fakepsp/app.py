"""A fake payment provider with a Stripe-shaped API, its own ledger and dial-a-failure knobs.

Stripe semantics kept on purpose, because the gateway's correctness depends on them:
- form-encoded bodies, `metadata[key]=value`, Bearer API key;
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
import hmac
import json
import logging
import os
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger("fakepsp")

TOKEN_ALWAYS_OK = "tok_visa"
TOKEN_ALWAYS_DECLINED = "tok_chargeDeclined"


class Rates(msgspec.Struct, kw_only=True):
    latency_ms: float = 0.0
    decline_rate: float = 0.0
    timeout_rate: float = 0.0
    lost_rate: float = 0.0
    hang_s: float = 30.0  # how long a "timeout" hangs before doing the work
    capture_latency_ms: float = 0.0  # extra, captures only: a capture that lands late


class FakePspConfig(msgspec.Struct, kw_only=True):
    api_key: str = "sk_test_flashsale"
    rates: Rates = msgspec.field(default_factory=Rates)
    ledger_path: str | None = None  # JSON snapshot, reloaded at start; None = memory only
    seed: int | None = None
    idempotency_keys_max: int = 1_000_000  # oldest keys are forgotten past this (Stripe: 24 h)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> FakePspConfig:
        env = dict(os.environ if env is None else env)
        rates = Rates(
            latency_ms=float(env.get("FAKEPSP_LATENCY_MS", 0)),
            decline_rate=float(env.get("FAKEPSP_DECLINE_RATE", 0)),
            timeout_rate=float(env.get("FAKEPSP_TIMEOUT_RATE", 0)),
            lost_rate=float(env.get("FAKEPSP_LOST_RATE", 0)),
            hang_s=float(env.get("FAKEPSP_HANG_S", 30)),
            capture_latency_ms=float(env.get("FAKEPSP_CAPTURE_LATENCY_MS", 0)),
        )
        seed = env.get("FAKEPSP_SEED")
        return cls(
            api_key=env.get("FAKEPSP_API_KEY", "sk_test_flashsale"),
            rates=rates,
            ledger_path=env.get("FAKEPSP_LEDGER_PATH") or None,
            seed=int(seed) if seed else None,
            idempotency_keys_max=int(env.get("FAKEPSP_IDEMPOTENCY_KEYS_MAX", 1_000_000)),
        )


class StoredResponse(msgspec.Struct):
    fingerprint: str
    status: int | None = None  # None while the first request is still running
    body: dict[str, Any] | None = None


class ApiError(Exception):
    def __init__(self, status: int, type_: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type_, "message": message, **extra}}


def _now_s() -> int:
    return int(time.time())


def _int_param(params: dict[str, str], name: str, default: int) -> int:
    """An integer form or query parameter; a malformed one is the caller's error (400)."""
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, "invalid_request_error", f"Invalid integer: {raw[:50]!r}",
                       param=name) from None


class Ledger:
    """Payment intents and refunds, in creation order. Plain dicts shaped like Stripe objects."""

    def __init__(self) -> None:
        self.intents: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []  # creation order; forgotten ids stay as tombstones
        self.position: dict[str, int] = {}  # id -> index in order, for list cursors
        self.refunds: dict[str, dict[str, Any]] = {}
        self.by_purchase: dict[str, list[str]] = {}

    def add_intent(self, pi: dict[str, Any]) -> None:
        self.intents[pi["id"]] = pi
        self.position[pi["id"]] = len(self.order)
        self.order.append(pi["id"])
        purchase_id = pi["metadata"].get("purchase_id")
        if purchase_id:
            self.by_purchase.setdefault(purchase_id, []).append(pi["id"])

    def forget_intent(self, pi_id: str) -> dict[str, Any] | None:
        pi = self.intents.pop(pi_id, None)
        if pi is not None:
            ids = self.by_purchase.get(pi["metadata"].get("purchase_id", ""), [])
            if pi_id in ids:
                ids.remove(pi_id)
        return pi

    def page(self, limit: int, starting_after: str | None) -> tuple[list[dict[str, Any]], bool]:
        """Newest first, like Stripe's list endpoints; O(limit) per page."""
        if starting_after is None:
            i = len(self.order) - 1
        elif starting_after in self.position:
            i = self.position[starting_after] - 1
        else:
            raise ApiError(400, "invalid_request_error", f"unknown starting_after {starting_after}")
        out: list[dict[str, Any]] = []
        while i >= 0 and len(out) < limit:
            pi = self.intents.get(self.order[i])
            if pi is not None:
                out.append(pi)
            i -= 1
        has_more = any(self.order[j] in self.intents for j in range(i, -1, -1)) if i >= 0 else False
        return out, has_more

    def get(self, pi_id: str) -> dict[str, Any]:
        pi = self.intents.get(pi_id)
        if pi is None:
            raise ApiError(404, "invalid_request_error", f"No such payment_intent: '{pi_id}'",
                           code="resource_missing")
        return pi

    def snapshot(self) -> dict[str, Any]:
        return {"intents": list(self.intents.values()), "refunds": list(self.refunds.values())}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Ledger:
        ledger = cls()
        for pi in data.get("intents", []):
            ledger.add_intent(pi)
        for refund in data.get("refunds", []):
            ledger.refunds[refund["id"]] = refund
        return ledger


class FakePsp:
    def __init__(self, config: FakePspConfig) -> None:
        self.config = config
        self.rates = config.rates
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

    def _roll_chaos(self, token: str | None) -> str:
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

    def create_intent(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
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
        metadata = {k[len("metadata["):-1]: v for k, v in params.items() if k.startswith("metadata[")}
        payment_method = params.get("payment_method")
        pi = {
            "id": "pi_" + secrets.token_hex(12),
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "amount_refunded": 0,
            "currency": params.get("currency", "usd"),
            "capture_method": capture_method,
            "payment_method": payment_method,
            "metadata": metadata,
            "status": "requires_confirmation" if payment_method else "requires_payment_method",
            "created": _now_s(),
            "last_payment_error": None,
        }
        self.ledger.add_intent(pi)
        self.count("intents_created")
        if params.get("confirm") == "true":
            return self._confirm(pi)
        return 200, pi

    def confirm_intent(self, pi_id: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        pi = self.ledger.get(pi_id)
        if params.get("payment_method"):
            pi["payment_method"] = params["payment_method"]
        return self._confirm(pi)

    def _confirm(self, pi: dict[str, Any]) -> tuple[int, dict[str, Any]]:
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

    def capture_intent(self, pi_id: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        pi = self.ledger.get(pi_id)
        if pi["status"] != "requires_capture":
            raise self._unexpected_state(pi, "capture")
        amount = _int_param(params, "amount_to_capture", pi["amount_capturable"])
        if not 0 < amount <= pi["amount_capturable"]:
            raise ApiError(400, "invalid_request_error", "bad amount_to_capture",
                           param="amount_to_capture")
        pi["status"] = "succeeded"
        pi["amount_received"] = amount
        pi["amount_capturable"] = 0
        self.count("captures")
        return 200, pi

    def cancel_intent(self, pi_id: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        pi = self.ledger.get(pi_id)
        if pi["status"] not in ("requires_payment_method", "requires_confirmation", "requires_capture"):
            raise self._unexpected_state(pi, "cancel")
        pi["status"] = "canceled"
        pi["amount_capturable"] = 0
        pi["cancellation_reason"] = params.get("cancellation_reason")
        self.count("voids")
        return 200, pi

    def create_refund(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        pi = self.ledger.get(params.get("payment_intent", ""))
        remaining = pi["amount_received"] - pi["amount_refunded"]
        if pi["status"] != "succeeded" or remaining <= 0:
            raise ApiError(400, "invalid_request_error", "This charge has already been refunded "
                           "or was never captured.", code="charge_already_refunded")
        amount = _int_param(params, "amount", remaining)
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
            "metadata": {k[len("metadata["):-1]: v for k, v in params.items() if k.startswith("metadata[")},
            "created": _now_s(),
        }
        self.ledger.refunds[refund["id"]] = refund
        self.count("refunds")
        return 200, refund

    @staticmethod
    def _unexpected_state(pi: dict[str, Any], action: str) -> ApiError:
        return ApiError(400, "invalid_request_error",
                        f"You cannot {action} this PaymentIntent because it has a status of "
                        f"{pi['status']}.", code="payment_intent_unexpected_state",
                        payment_intent=dict(pi))

    # -- idempotency + chaos around one mutating request ---------------------------------------

    async def run_mutation(
        self, request: web.Request, params: dict[str, str], token: str | None,
        op: Callable[[], tuple[int, dict[str, Any]]],
    ) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key")
        chaos = self._roll_chaos(token)
        fingerprint = hashlib.sha256(
            json.dumps([request.method, request.path, sorted(params.items())]).encode()
        ).hexdigest()
        if key is not None:
            stored = self.idempotency.get(key)
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    self.count("idempotency_mismatch")
                    return _error(400, "idempotency_error", "Keys for idempotent requests can only "
                                  "be used with the same parameters they were first used with.")
                if stored.status is None:
                    self.count("idempotency_in_use")
                    return _error(409, "idempotency_error", "There is currently another in-progress "
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
            self.idempotency[key] = StoredResponse(fingerprint)
            while len(self.idempotency) > self.config.idempotency_keys_max:
                self.idempotency.popitem(last=False)
        try:
            if chaos == "timeout":
                self.count("timeouts")
                # The client gives up long before this; the work still happens afterwards, as
                # it does at a real PSP whose reply got stuck.
                await asyncio.sleep(self.rates.hang_s)
            try:
                status, body = op()
            except ApiError as e:
                status, body = e.status, e.body
        except BaseException:
            if key is not None:
                self.idempotency.pop(key, None)
            raise
        self._dirty = True
        if key is not None:
            self.idempotency[key] = StoredResponse(fingerprint, status, body)
        if chaos == "lost":
            return self._lose(request)
        return web.json_response(body, status=status)

    def _lose(self, request: web.Request) -> web.Response:
        self.count("lost_responses")
        if self.random.random() < 0.5 and request.transport is not None:
            request.transport.close()  # the client sees a dropped connection
        return _error(500, "api_error", "An unknown error occurred.")

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


def _error(status: int, type_: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"type": type_, "message": message, **extra}}, status=status)


PSP_KEY = web.AppKey("psp", FakePsp)


def create_app(config: FakePspConfig) -> web.Application:
    psp = FakePsp(config)

    expected_auth = f"Bearer {psp.config.api_key}".encode()

    @web.middleware
    async def auth_and_latency(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        # Constant time, as a real PSP would: the comparison must not leak the key's prefix.
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected_auth):
            return _error(401, "invalid_request_error", "Invalid API Key provided.")
        if psp.rates.latency_ms > 0 and not request.path.startswith("/admin"):
            await asyncio.sleep(psp.rates.latency_ms / 1000)
        try:
            return await handler(request)
        except ApiError as e:
            return web.json_response(e.body, status=e.status)

    async def form(request: web.Request) -> dict[str, str]:
        try:
            fields = await request.post()
        except ValueError as e:  # a body aiohttp cannot parse as the form it claims to be
            raise ApiError(400, "invalid_request_error", f"Invalid request body: {e}") from None
        return {k: str(v) for k, v in fields.items()}

    async def create_intent(request: web.Request) -> web.StreamResponse:
        params = await form(request)
        psp.count("req_create")
        return await psp.run_mutation(request, params, params.get("payment_method"),
                                      lambda: psp.create_intent(params))

    def intent_action(action: Callable[[str, dict[str, str]], tuple[int, dict[str, Any]]],
                      name: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            params = await form(request)
            pi_id = request.match_info["id"]
            psp.count(f"req_{name}")
            if name == "capture" and psp.rates.capture_latency_ms > 0:
                await asyncio.sleep(psp.rates.capture_latency_ms / 1000)
            token = psp.ledger.get(pi_id).get("payment_method")
            return await psp.run_mutation(request, params, token, lambda: action(pi_id, params))
        return handler

    async def create_refund(request: web.Request) -> web.StreamResponse:
        params = await form(request)
        psp.count("req_refund")
        token = psp.ledger.get(params.get("payment_intent", "")).get("payment_method")
        return await psp.run_mutation(request, params, token, lambda: psp.create_refund(params))

    async def get_intent(request: web.Request) -> web.Response:
        return web.json_response(psp.ledger.get(request.match_info["id"]))

    async def list_intents(request: web.Request) -> web.Response:
        limit = max(1, min(100, _int_param(dict(request.query), "limit", 10)))
        data, has_more = psp.ledger.page(limit, request.query.get("starting_after"))
        return web.json_response({
            "object": "list",
            "url": "/v1/payment_intents",
            "has_more": has_more,
            "data": data,
        })

    async def search_intents(request: web.Request) -> web.Response:
        # Only the query the gateway needs: metadata['purchase_id']:'p_...'.
        query = request.query.get("query", "")
        prefix = "metadata['purchase_id']:'"
        if not (query.startswith(prefix) and query.endswith("'")):
            raise ApiError(400, "invalid_request_error", "unsupported search query")
        purchase_id = query[len(prefix):-1]
        ids = psp.ledger.by_purchase.get(purchase_id, [])
        return web.json_response({"object": "search_result", "has_more": False,
                                  "data": [psp.ledger.intents[i] for i in ids]})

    async def admin_get_config(request: web.Request) -> web.Response:
        return web.json_response(msgspec.to_builtins(psp.rates))

    async def admin_set_config(request: web.Request) -> web.Response:
        try:
            changes = msgspec.json.decode(await request.read(), type=dict[str, Any])
            merged = {**msgspec.to_builtins(psp.rates), **changes}
            psp.rates = msgspec.convert(merged, Rates)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ApiError(400, "invalid_request_error", f"Invalid rates: {e}") from None
        log.info("rates changed: %s", merged)
        return web.json_response(msgspec.to_builtins(psp.rates))

    async def admin_stats(request: web.Request) -> web.Response:
        return web.json_response({**psp.stats, "intents": len(psp.ledger.intents),
                                  "refunds_total": len(psp.ledger.refunds)})

    async def admin_forget(request: web.Request) -> web.Response:
        # Injects "confirmed purchase without a capture" for reconciliation tests.
        pi = psp.ledger.forget_intent(request.match_info["id"])
        if pi is None:
            raise ApiError(404, "invalid_request_error", "no such payment_intent")
        psp._dirty = True
        return web.json_response(pi)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def on_startup(app: web.Application) -> None:
        app[FLUSH_KEY] = asyncio.create_task(psp.flush_forever())

    async def on_cleanup(app: web.Application) -> None:
        app[FLUSH_KEY].cancel()
        psp.flush()

    app = web.Application(middlewares=[auth_and_latency])
    app[PSP_KEY] = psp
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_post("/v1/payment_intents", create_intent)
    app.router.add_get("/v1/payment_intents", list_intents)
    app.router.add_get("/v1/payment_intents/search", search_intents)
    app.router.add_get("/v1/payment_intents/{id}", get_intent)
    app.router.add_post("/v1/payment_intents/{id}/confirm", intent_action(psp.confirm_intent, "confirm"))
    app.router.add_post("/v1/payment_intents/{id}/capture", intent_action(psp.capture_intent, "capture"))
    app.router.add_post("/v1/payment_intents/{id}/cancel", intent_action(psp.cancel_intent, "cancel"))
    app.router.add_post("/v1/refunds", create_refund)
    app.router.add_get("/admin/config", admin_get_config)
    app.router.add_post("/admin/config", admin_set_config)
    app.router.add_get("/admin/stats", admin_stats)
    app.router.add_delete("/admin/payment_intents/{id}", admin_forget)
    app.router.add_get("/healthz", healthz)
    return app


FLUSH_KEY = web.AppKey("flush", asyncio.Task)
