"""The fake PSP (a real HTTP process) and the Stripe-style adapter against it: idempotency,
declines, timeouts, lost responses, list pagination."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import aiohttp
import pytest

from config.settings import load
from gateway.psp import CardDeclined, PspError, StripeLikePsp
from launch.processes import fakepsp_process

CALM = dict(latency_ms=0, decline_rate=0, timeout_rate=0, lost_rate=0, hang_s=0.6)


@pytest.fixture
async def psp(fake):
    url, admin, settings = fake
    admin.set_rates(**CALM)
    client = StripeLikePsp(url, settings.psp_api_key, timeout_s=0.3)
    yield client
    await client.close()
    admin.set_rates(**CALM)


def pid() -> str:
    return "p_" + secrets.token_hex(8)


async def test_bad_api_key_is_refused(fake):
    url, _, _ = fake
    client = StripeLikePsp(url, "sk_wrong", timeout_s=1)
    try:
        with pytest.raises(PspError) as e:
            await client.authorize(pid(), 100, "tok_visa")
        assert e.value.http_status == 401 and not e.value.transient
    finally:
        await client.close()


async def test_authorize_capture_refund_with_test_tokens(psp: StripeLikePsp):
    p = pid()
    auth = await psp.authorize(p, 1234, "tok_visa")
    assert auth.status == "requires_capture" and auth.amount_capturable == 1234
    assert auth.purchase_id == p
    captured = await psp.capture(p, auth.id)
    assert captured.status == "succeeded" and captured.net_captured_cents == 1234
    refund = await psp.refund(p, auth.id)
    assert refund is not None and refund.amount == 1234
    assert await psp.refund(p, auth.id) is not None  # same key: replayed, not a second refund
    assert (await psp.retrieve(auth.id)).amount_refunded == 1234

    declined = pid()
    with pytest.raises(CardDeclined):
        await psp.authorize(declined, 500, "tok_chargeDeclined")
    with pytest.raises(CardDeclined):  # the stored decline is replayed, never re-rolled
        await psp.authorize(declined, 500, "tok_chargeDeclined")
    [intent] = await psp.intents_for(declined)
    assert intent.status == "requires_payment_method"


async def test_same_key_replays_other_params_conflict(fake, psp: StripeLikePsp):
    url, _, settings = fake
    p = pid()
    first = await psp.authorize(p, 700, "tok_visa")
    again = await psp.authorize(p, 700, "tok_visa")
    assert again.id == first.id
    assert len(await psp.intents_for(p)) == 1
    with pytest.raises(PspError) as e:
        await psp.authorize(p, 701, "tok_visa")  # same key, other amount
    assert e.value.http_status == 400 and not e.value.transient
    headers = {"Authorization": f"Bearer {settings.psp_api_key}"}
    body = {"amount": "700", "currency": "usd", "payment_method": "tok_visa", "capture_method": "manual",
            "confirm": "true", "metadata[purchase_id]": p}
    async with aiohttp.ClientSession(headers=headers) as s, s.post(
            url + "/v1/payment_intents", data=body, headers={"Idempotency-Key": f"{p}:authorize"}) as resp:
        assert resp.status == 200 and resp.headers.get("Idempotent-Replayed") == "true"
        assert (await resp.json())["id"] == first.id


async def test_lost_response_did_the_work_once(fake, psp: StripeLikePsp):
    _, admin, _ = fake
    admin.set_rates(lost_rate=1.0)
    p = pid()
    for _ in range(3):
        with pytest.raises(PspError) as e:
            await psp.authorize(p, 900, "tok_other")
        assert e.value.transient
    admin.set_rates(lost_rate=0.0)
    intent = await psp.authorize(p, 900, "tok_other")
    assert intent.status == "requires_capture"
    assert [i.id for i in await psp.intents_for(p)] == [intent.id]


async def test_timeout_then_in_use_then_replay(fake, psp: StripeLikePsp):
    _, admin, _ = fake
    admin.set_rates(timeout_rate=1.0, hang_s=0.6)
    p = pid()
    with pytest.raises(PspError) as e:
        await psp.authorize(p, 900, "tok_other")  # client gives up after 0.3 s
    assert e.value.transient
    admin.set_rates(timeout_rate=0.0)
    with pytest.raises(PspError) as e:
        await psp.authorize(p, 900, "tok_other")  # the first request is still hanging
    assert e.value.transient and e.value.http_status == 409
    await asyncio.sleep(0.6)
    intent = await psp.authorize(p, 900, "tok_other")
    assert [i.id for i in await psp.intents_for(p)] == [intent.id]


async def test_decline_rate_is_honoured(fake, psp: StripeLikePsp):
    url, admin, settings = fake
    admin.set_rates(decline_rate=0.5)
    # 200 requests at once on a busy box: a client that waits, so only the rate decides.
    patient = StripeLikePsp(url, settings.psp_api_key, timeout_s=30)
    try:
        results = await asyncio.gather(
            *(patient.authorize(pid(), 100, "tok_any") for _ in range(200)), return_exceptions=True)
    finally:
        await patient.close()
    declines = sum(isinstance(r, CardDeclined) for r in results)
    assert all(isinstance(r, CardDeclined) or r.status == "requires_capture" for r in results)
    assert 60 <= declines <= 140


async def test_ledger_lists_everything_newest_first(psp: StripeLikePsp):
    mine = [pid() for _ in range(7)]
    for p in mine:
        await psp.authorize(p, 100, "tok_visa")
    listed = [i async for i in psp.ledger(page_size=3)]
    ours = [i.purchase_id for i in listed if i.purchase_id in mine]
    assert ours == list(reversed(mine))
    assert len({i.id for i in listed}) == len(listed)


async def test_void_and_capture_conflicts(psp: StripeLikePsp):
    p = pid()
    auth = await psp.authorize(p, 100, "tok_visa")
    voided = await psp.void(p, auth.id)
    assert voided.status == "canceled"
    assert (await psp.void(p, auth.id)).status == "canceled"
    with pytest.raises(PspError) as e:
        await psp.capture(p, auth.id)
    assert e.value.code == "payment_intent_unexpected_state" and not e.value.transient


async def test_ledger_file_survives_a_restart(tmp_path: Path):
    settings = load(env={}, file=None)
    ledger = tmp_path / "ledger.json"

    def start():
        proc, url = fakepsp_process(settings, tmp_path, name="fakepsp-file")
        proc.argv += ["--ledger", str(ledger)]
        proc.start()
        proc.wait_http_ok(url + "/healthz")
        return proc, url

    proc, url = start()
    client = StripeLikePsp(url, settings.psp_api_key, timeout_s=2)
    p = pid()
    first = await client.capture(p, (await client.authorize(p, 4200, "tok_visa")).id)
    await client.close()
    proc.stop()  # SIGTERM flushes the ledger
    proc, url = start()
    client = StripeLikePsp(url, settings.psp_api_key, timeout_s=2)
    try:
        assert (await client.retrieve(first.id)).net_captured_cents == 4200
        assert (await client.authorize(p, 4200, "tok_visa")).id == first.id  # key remembered
    finally:
        await client.close()
        proc.stop()


async def test_bad_input_is_a_400_not_a_500(fake, psp: StripeLikePsp):
    url, _, settings = fake
    auth = await psp.authorize(pid(), 100, "tok_visa")
    headers = {"Authorization": f"Bearer {settings.psp_api_key}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        cases = [
            s.get(url + "/v1/payment_intents", params={"limit": "abc"}),
            s.post(url + "/v1/payment_intents/" + auth.id + "/capture", data={"amount_to_capture": "x"}),
            s.post(url + "/v1/refunds", data={"payment_intent": auth.id, "amount": "1e3"}),
            s.post(url + "/v1/payment_intents", data=b'{"amount": ',
                   headers={"Content-Type": "application/json"}),
            s.post(url + "/v1/payment_intents", data=b"--x\r\n\r\n",
                   headers={"Content-Type": "multipart/form-data"}),  # no boundary
            s.post(url + "/admin/config", data=b'{"decline_rate": ',
                   headers={"Content-Type": "application/json"}),
            s.post(url + "/admin/config", data=b'["not", "an", "object"]'),
            s.post(url + "/admin/config", data=b'{"decline_rate": "lots"}'),
        ]
        for case in cases:
            async with case as resp:
                body = await resp.json()
                assert resp.status == 400, (resp.method, resp.url, resp.status, body)
                assert body["error"]["type"] == "invalid_request_error"
        # None of that changed the rates or moved money.
        async with s.get(url + "/admin/config") as resp:
            assert (await resp.json())["decline_rate"] == 0
    assert (await psp.retrieve(auth.id)).status == "requires_capture"


async def test_api_key_must_match_exactly(fake):
    url, _, settings = fake
    key = settings.psp_api_key
    async with aiohttp.ClientSession() as s:
        for auth in (f"Bearer {key}x", f"Bearer {key[:-1]}", key, f"bearer {key}", ""):
            async with s.get(url + "/v1/payment_intents", headers={"Authorization": auth}) as resp:
                assert resp.status == 401, auth
        async with s.get(url + "/v1/payment_intents", headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 200
