"""Reconciliation's verdicts, with the fake PSP's application served in this process (driven
through the real adapter) and the purchases table in memory: each kind of mismatch is found,
a repair moves the money once and a second run finds nothing, a dry run moves none, and money
that may still be in flight (a reserved purchase, a capture within the grace period) is left
alone. The same against real Postgres and the fake PSP process: tests/integration/test_reconcile.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from config.settings import Settings
from gateway import reconcile as reconcile_module
from gateway.fakepsp.app import FakePspConfig, create_app
from gateway.psp import StripeLikePsp
from gateway.reconcile import reconcile

API_KEY = "sk_test_unit"
PRICE_CENTS = 500
PAGE_SIZE = 2  # several ledger pages


def pid(n: int) -> str:
    return f"p_{n:030x}"


class Purchases:
    """The two reads reconcile makes of `purchases`, from a dict id -> (status, psp_ref)."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, str | None]] = {}

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        if "status = 'confirmed'" in query:  # confirmed purchases (every SKU pays here)
            return [{"id": i, "psp_ref": ref} for i, (s, ref) in self.rows.items() if s == "confirmed"]
        assert "ANY($1" in query
        return [{"id": i, "status": self.rows[i][0], "psp_ref": self.rows[i][1]}
                for i in args[0] if i in self.rows]

    async def close(self) -> None:
        pass


@pytest.fixture
async def world(monkeypatch) -> AsyncIterator[tuple[Settings, StripeLikePsp, Purchases]]:
    purchases = Purchases()

    async def connect(_url: str) -> Purchases:
        return purchases

    monkeypatch.setattr(reconcile_module.asyncpg, "connect", connect)
    async with TestServer(create_app(FakePspConfig(api_key=API_KEY))) as server:
        url = str(server.make_url("")).rstrip("/")
        settings = Settings(psp_url=url, psp_api_key=API_KEY, reconcile_page_size=PAGE_SIZE,
                            payment_attempts_max=2, payment_backoff_base_s=0.001,
                            payment_backoff_max_s=0.002)
        psp = StripeLikePsp(url, API_KEY, timeout_s=5.0)
        try:
            yield settings, psp, purchases
        finally:
            await psp.close()


async def charge(psp: StripeLikePsp, purchase_id: str, capture: bool = True) -> str:
    intent = await psp.authorize(purchase_id, PRICE_CENTS, "tok_visa")
    return (await psp.capture(purchase_id, intent.id)).id if capture else intent.id


async def second_charge(settings: Settings, purchase_id: str) -> str:
    """A capture for the purchase made outside the gateway's idempotency keys."""
    form = {"amount": str(PRICE_CENTS), "currency": "usd", "payment_method": "tok_visa",
            "confirm": "true", "metadata[purchase_id]": purchase_id}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http, \
            http.post(settings.psp_url + "/v1/payment_intents", data=form) as resp:
        return str((await resp.json())["id"])


async def test_each_mismatch_is_found_repaired_once_and_then_clean(world):
    settings, psp, purchases = world
    ok, orphan, dup, stale, unpaid = pid(1), pid(2), pid(3), pid(4), pid(5)
    purchases.rows[ok] = ("confirmed", await charge(psp, ok))
    await charge(psp, orphan)
    purchases.rows[orphan] = ("expired", None)  # captured, then the reservation expired
    purchases.rows[dup] = ("confirmed", await charge(psp, dup))
    extra = await second_charge(settings, dup)
    stale_auth = await charge(psp, stale, capture=False)
    purchases.rows[stale] = ("cancelled", None)
    purchases.rows[unpaid] = ("confirmed", "pi_gone")

    dry = await reconcile(settings, repair=False, grace_s=0, psp=psp)
    assert (dry.captures_matched, dry.orphan_captures, dry.duplicate_captures,
            dry.stale_authorizations, dry.confirmed_without_capture) == (2, 1, 1, 1, 1)
    assert dry.refunded == dry.voided == 0 and not dry.clean
    assert dry.confirmed_without_capture_ids == [unpaid]

    fixed = await reconcile(settings, repair=True, grace_s=0, psp=psp)
    assert (fixed.refunded, fixed.refunded_cents, fixed.voided, fixed.errors) == (2, 2 * PRICE_CENTS, 1, 0)
    assert set(fixed.repaired_ids) == {extra, stale_auth} | {
        i.id for i in await psp.intents_for(orphan)}
    (kept,) = [i for i in await psp.intents_for(dup) if i.net_captured_cents > 0]
    assert kept.id == purchases.rows[dup][1]  # the order's own capture stays

    again = await reconcile(settings, repair=True, grace_s=0, psp=psp)
    assert (again.orphan_captures, again.duplicate_captures, again.stale_authorizations,
            again.refunded, again.voided) == (0, 0, 0, 0, 0)
    assert again.confirmed_without_capture == 1  # flagged until a human acts


async def test_money_that_may_be_in_flight_is_left_alone(world):
    settings, psp, purchases = world
    reserved, young = pid(1), pid(2)
    await charge(psp, reserved)
    purchases.rows[reserved] = ("reserved", None)  # its confirm may be on the way
    await charge(psp, young)  # no purchase row yet, and captured within the grace period
    report = await reconcile(settings, repair=True, grace_s=3600, psp=psp)
    assert report.skipped_in_flight == 2 and report.refunded == 0 and report.clean


async def test_intents_that_name_no_purchase_are_not_ours(world):
    settings, psp, _ = world
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http, \
            http.post(settings.psp_url + "/v1/payment_intents", data={
                "amount": "100", "currency": "usd", "payment_method": "tok_visa", "confirm": "true",
            }) as resp:
        assert resp.status == 200
    report = await reconcile(settings, repair=True, grace_s=0, psp=psp)
    assert report.intents_seen == 1 and report.refunded == 0 and report.clean
