"""The Stripe-like PSP adapter against a scripted HTTP server: how each answer is sorted
(declined, transient, final), the key each mutating call carries, a capture or void the PSP
finds already settled (looked up: the intent's state is the truth), a refund of nothing left,
and the ledger read page by page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.psp import UNEXPECTED_STATE, CardDeclined, PspError, StripeLikePsp

TIMEOUT_S = 2.0


def intent(id: str = "pi_1", status: str = "requires_capture", **fields: Any) -> dict[str, Any]:
    return {"id": id, "status": status, "amount": 500, "metadata": {"purchase_id": "p_1"}, **fields}


def error(status: int, type_: str = "invalid_request_error", code: str | None = None,
          **fields: Any) -> web.Response:
    return web.json_response({"error": {"type": type_, "message": f"{status} says no", "code": code,
                                        **fields}}, status=status)


class Script:
    """Answers each request with the next scripted response for its (method, path); records
    the requests (method, path, form or query, Idempotency-Key)."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], list[web.Response]] = {}
        self.seen: list[tuple[str, str, dict[str, str], str | None]] = []

    def on(self, method: str, path: str, *responses: web.Response) -> None:
        self.answers.setdefault((method, path), []).extend(responses)

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post()) if request.method == "POST" else dict(request.query)
        self.seen.append((request.method, request.path, {k: str(v) for k, v in form.items()},
                          request.headers.get("Idempotency-Key")))
        queue = self.answers.get((request.method, request.path))
        assert queue, f"unscripted {request.method} {request.path}"
        return queue.pop(0)


@pytest.fixture
async def script_psp() -> AsyncIterator[tuple[Script, StripeLikePsp]]:
    script = Script()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", script.handle)
    async with TestServer(app) as server:
        psp = StripeLikePsp(str(server.make_url("")), "sk_test", timeout_s=TIMEOUT_S)
        try:
            yield script, psp
        finally:
            await psp.close()


async def test_authorize_sends_its_key_and_a_manual_capture(script_psp):
    script, psp = script_psp
    script.on("POST", "/v1/payment_intents", web.json_response(intent()))
    got = await psp.authorize("p_1", 500, "tok_visa")
    assert (got.id, got.status, got.purchase_id) == ("pi_1", "requires_capture", "p_1")
    _, _, form, key = script.seen[0]
    assert key == "p_1:authorize"
    assert form["capture_method"] == "manual" and form["amount"] == "500"
    assert form["metadata[purchase_id]"] == "p_1"


async def test_a_decline_carries_its_intent(script_psp):
    script, psp = script_psp
    script.on("POST", "/v1/payment_intents",
              error(402, "card_error", "card_declined", payment_intent=intent(status="canceled")))
    with pytest.raises(CardDeclined) as declined:
        await psp.authorize("p_1", 500, "tok_chargeDeclined")
    assert declined.value.payment_intent is not None and not declined.value.transient


@pytest.mark.parametrize(("status", "transient"), [(409, True), (429, True), (500, True),
                                                   (503, True), (400, False), (404, False)])
async def test_errors_are_sorted_into_transient_and_final(script_psp, status, transient):
    script, psp = script_psp
    script.on("GET", "/v1/payment_intents/pi_1", error(status))
    with pytest.raises(PspError) as failed:
        await psp.retrieve("pi_1")
    assert failed.value.transient is transient and failed.value.http_status == status


async def test_an_answer_that_is_not_json_is_still_sorted(script_psp):
    script, psp = script_psp
    script.on("GET", "/v1/payment_intents/pi_1", web.Response(status=502, text="<html>bad gateway"))
    with pytest.raises(PspError) as failed:
        await psp.retrieve("pi_1")
    assert failed.value.transient and "bad gateway" in str(failed.value)


async def test_nothing_listening_is_transient():
    psp = StripeLikePsp("http://127.0.0.1:9", "sk_test", timeout_s=TIMEOUT_S)
    try:
        with pytest.raises(PspError) as failed:
            await psp.retrieve("pi_1")
        assert failed.value.transient
    finally:
        await psp.close()


@pytest.mark.parametrize(("step", "path", "settled", "key"), [
    ("capture", "/v1/payment_intents/pi_1/capture", "succeeded", "p_1:capture"),
    ("void", "/v1/payment_intents/pi_1/cancel", "canceled", "p_1:void:pi_1"),
])
async def test_a_step_already_settled_is_looked_up_and_succeeds(script_psp, step, path, settled, key):
    script, psp = script_psp
    script.on("POST", path, error(400, code=UNEXPECTED_STATE))
    script.on("GET", "/v1/payment_intents/pi_1", web.json_response(intent(status=settled)))
    got = await getattr(psp, step)("p_1", "pi_1")
    assert got.status == settled
    assert [(m, p, k) for m, p, _, k in script.seen] == [("POST", path, key),
                                                         ("GET", "/v1/payment_intents/pi_1", None)]


@pytest.mark.parametrize(("step", "path", "other"), [
    ("capture", "/v1/payment_intents/pi_1/capture", "canceled"),
    ("void", "/v1/payment_intents/pi_1/cancel", "succeeded"),
])
async def test_a_step_settled_the_other_way_is_a_final_error(script_psp, step, path, other):
    script, psp = script_psp
    script.on("POST", path, error(400, code=UNEXPECTED_STATE))
    script.on("GET", "/v1/payment_intents/pi_1", web.json_response(intent(status=other)))
    with pytest.raises(PspError) as failed:
        await getattr(psp, step)("p_1", "pi_1")
    assert failed.value.code == UNEXPECTED_STATE and not failed.value.transient


async def test_another_final_error_is_not_looked_up(script_psp):
    script, psp = script_psp
    script.on("POST", "/v1/payment_intents/pi_1/capture", error(400, code="amount_too_large"))
    with pytest.raises(PspError):
        await psp.capture("p_1", "pi_1")
    assert len(script.seen) == 1


async def test_a_refund_of_nothing_left_is_none(script_psp):
    script, psp = script_psp
    script.on("POST", "/v1/refunds", error(400, code="charge_already_refunded"),
              web.json_response({"id": "re_1", "payment_intent": "pi_1", "amount": 500,
                                 "status": "succeeded"}))
    assert await psp.refund("p_1", "pi_1") is None
    refund = await psp.refund("p_1", "pi_1")
    assert refund is not None and refund.amount == 500
    assert "amount" not in script.seen[0][2]  # "whatever is still captured": one key, one request
    assert script.seen[0][3] == "p_1:refund:pi_1"


async def test_the_ledger_is_read_page_by_page(script_psp):
    script, psp = script_psp
    script.on("GET", "/v1/payment_intents",
              web.json_response({"data": [intent("pi_1"), intent("pi_2")], "has_more": True}),
              web.json_response({"data": [intent("pi_3")], "has_more": False}))
    ids = [i.id async for i in psp.ledger(page_size=2)]
    assert ids == ["pi_1", "pi_2", "pi_3"]
    assert [q for _, _, q, _ in script.seen] == [{"limit": "2"}, {"limit": "2", "starting_after": "pi_2"}]
