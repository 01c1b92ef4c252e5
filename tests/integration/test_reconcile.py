"""Reconciliation against real Postgres and the fake PSP process: a clean ledger is left alone,
injected mismatches are found, a dry run moves no money, a repair fixes them once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import aiohttp
import msgspec
import pytest

from config.settings import Settings, to_env
from gateway.fakepsp.client import FakePspAdmin
from gateway.psp import StripeLikePsp
from gateway.reconcile import reconcile
from launch.processes import fakepsp_process


@pytest.fixture
def psp_url(settings: Settings, tmp_path):
    proc, url = fakepsp_process(settings, tmp_path)
    proc.start()
    proc.wait_http_ok(url + "/healthz")
    yield url
    proc.stop()


async def add_purchase(db, pid: str, status: str, psp_ref: str | None = None) -> None:
    now = int(time.time() * 1000)
    await db.execute(
        "INSERT INTO purchases (id, sku, user_id, qty, status, reason, amount_cents, request_hash,"
        " accepted_at_ms, decided_at_ms, updated_at_ms, expires_at_ms, psp_ref)"
        " VALUES ($1, 'hot', $1, 1, $2, NULL, 500, 'h', $3, $3, $3, $4, $5)",
        pid, status, now, now + 60_000, psp_ref)


async def charge(psp: StripeLikePsp, pid: str, token: str = "tok_visa") -> str:
    auth = await psp.authorize(pid, 500, token)
    return (await psp.capture(pid, auth.id)).id


async def second_charge(url: str, api_key: str, pid: str) -> str:
    """A capture for `pid` made outside the gateway's idempotency keys (a double charge)."""
    body = {"amount": "500", "currency": "usd", "payment_method": "tok_visa", "confirm": "true",
            "metadata[purchase_id]": pid}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {api_key}"}) as s, \
            s.post(url + "/v1/payment_intents", data=body) as resp:
        answer = await resp.json()
        assert answer["status"] == "succeeded", answer
        return str(answer["id"])


async def test_reconcile_repairs_injected_mismatches_and_nothing_else(settings, db, psp_url):
    s = msgspec.structs.replace(settings, psp_url=psp_url, reconcile_page_size=3)
    admin = FakePspAdmin(psp_url, s.psp_api_key)
    await db.execute("INSERT INTO skus (sku, stock, reserved, sold, price_cents, payment,"
                     " updated_at_ms) VALUES ('hot', 100, 1, 2, 500, 'required', 0)")
    psp = StripeLikePsp(psp_url, s.psp_api_key, timeout_s=5)
    try:
        # A clean sale: two confirmed purchases with their captures, one reservation in flight.
        for pid in ("p_ok1", "p_ok2"):
            await add_purchase(db, pid, "confirmed", await charge(psp, pid))
        await charge(psp, "p_inflight")
        await add_purchase(db, "p_inflight", "reserved")

        clean = await reconcile(s, repair=True, grace_s=0, psp=psp)
        assert clean.clean and clean.captures_matched == 2 and clean.skipped_in_flight == 1
        assert clean.refunded == clean.voided == 0
        assert admin.stats().get("refunds", 0) == 0

        # Inject: a second charge for a confirmed purchase (metadata names it, other key)...
        dup = await second_charge(psp_url, s.psp_api_key, "p_ok1")
        # ...a capture for a purchase that expired, and one for a purchase nobody knows...
        orphan = await charge(psp, "p_expired")
        await add_purchase(db, "p_expired", "expired")
        unknown = await charge(psp, "p_unknown")
        # ...an authorization left behind by a cancelled purchase...
        await add_purchase(db, "p_cancelled", "cancelled")
        stale_auth = await psp.authorize("p_cancelled", 500, "tok_visa")
        # ...and a confirmed purchase whose capture the PSP does not have.
        lost_ref = await charge(psp, "p_lost")
        await add_purchase(db, "p_lost", "confirmed", lost_ref)
        admin.forget(lost_ref)

        dry = await reconcile(s, repair=False, grace_s=0, psp=psp)
        assert (dry.duplicate_captures, dry.orphan_captures, dry.stale_authorizations,
                dry.confirmed_without_capture) == (1, 2, 1, 1)
        assert dry.confirmed_without_capture_ids == ["p_lost"]
        assert dry.refunded == dry.voided == 0 and admin.stats().get("refunds", 0) == 0

        young = await reconcile(s, repair=False, grace_s=3600, psp=psp)
        assert young.orphan_captures == 0 and young.duplicate_captures == 1  # never "in flight"

        fixed = await reconcile(s, repair=True, grace_s=0, psp=psp)
        assert fixed.refunded == 3 and fixed.refunded_cents == 1500 and fixed.voided == 1
        assert set(fixed.repaired_ids) == {dup, orphan, unknown, stale_auth.id}
        for ref in (dup, orphan, unknown):
            assert (await psp.retrieve(ref)).net_captured_cents == 0
        assert (await psp.retrieve(stale_auth.id)).status == "canceled"
        for pid in ("p_ok1", "p_ok2"):
            ref = await db.fetchval("SELECT psp_ref FROM purchases WHERE id = $1", pid)
            assert (await psp.retrieve(ref)).net_captured_cents == 500  # untouched

        again = await reconcile(s, repair=True, grace_s=0, psp=psp)
        assert again.refunded == again.voided == 0
        assert again.orphan_captures == again.duplicate_captures == again.stale_authorizations == 0
        assert again.confirmed_without_capture == 1  # flagged until a human acts
        assert admin.stats()["refunds"] == 3
    finally:
        await psp.close()

    # The CLI prints the same report as JSON and exits 1 while something needs a human.
    env = {**os.environ, **to_env(s)}
    env.pop("FLASHSALE_CONFIG", None)
    # In a thread: the CLI runs its own event loop; this test's loop stays free meanwhile.
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway.reconcile", "--dry-run", "--grace-s", "0"],
        env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["confirmed_without_capture_ids"] == ["p_lost"] and report["refunded"] == 0


async def test_reconcile_repairs_through_a_psp_that_loses_answers(settings, db, psp_url):
    """Half the PSP's answers time out or get lost (the work still happens): reconciliation
    retries with the same keys until each repair is answered, moves the money once, and has
    nothing left to do afterwards."""
    s = msgspec.structs.replace(settings, psp_url=psp_url, payment_attempts_max=40,
                                payment_backoff_base_s=0.01, payment_backoff_max_s=0.05)
    admin = FakePspAdmin(psp_url, s.psp_api_key)
    psp = StripeLikePsp(psp_url, s.psp_api_key, timeout_s=0.1)
    try:
        # Ten of each: twenty repairs, of which some first answers are lost for sure (1 - 2**-20).
        # Not tok_visa: the fake PSP never fails a request about a tok_visa payment.
        orphans = [await charge(psp, f"p_gone{i}", "tok_mastercard") for i in range(10)]
        stale = [(await psp.authorize(f"p_let_go{i}", 500, "tok_mastercard")).id for i in range(10)]
        for i in range(10):
            await add_purchase(db, f"p_gone{i}", "expired")
            await add_purchase(db, f"p_let_go{i}", "cancelled")
        admin.set_rates(timeout_rate=0.25, lost_rate=0.25, hang_s=0.2)

        fixed = await reconcile(s, repair=True, grace_s=0, psp=psp)
        assert fixed.errors == 0, fixed
        assert (fixed.refunded, fixed.refunded_cents, fixed.voided) == (10, 5000, 10)
        assert set(fixed.repaired_ids) == set(orphans + stale)
        faults = admin.stats()
        assert faults.get("timeouts", 0) + faults.get("lost_responses", 0) > 0

        admin.set_rates(timeout_rate=0, lost_rate=0)
        await asyncio.sleep(0.3)  # a hung first request finishes its work meanwhile
        assert admin.stats()["refunds"] == 10  # one refund each, however many retries
        for ref in orphans:
            assert (await psp.retrieve(ref)).net_captured_cents == 0
        for ref in stale:
            assert (await psp.retrieve(ref)).status == "canceled"
        again = await reconcile(s, repair=True, grace_s=0, psp=psp)
        assert again.clean and again.refunded == again.voided == 0
    finally:
        await psp.close()
