"""A PSP outage shorter than the reservations costs no valid payment: the gateway keeps sending
each call (same idempotency key) until the reservation's deadline less the margin, so every
tok_visa purchase reserved before or during the outage is confirmed once the PSP is back, and
charged once.

The outage is `FLASHSALE_PSP_OUTAGE_S` long (default 30 s) and the reservations four times that
(120 s): the scenario of the operations doc, outage well inside the reservation and ending long
before its deadline less the margin. The first half the PSP hangs (SIGSTOP: every call times
out, requests pile up unanswered in its socket), the second half it is gone (connection refused);
then it comes back on the same port with its ledger file."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import msgspec
import pytest

from gateway.fakepsp.client import FakePspAdmin
from launch.processes import Process, fakepsp_process, spare_port
from tests.hostile import still_deciding
from tests.integration.test_gateway_e2e import SKU, Saga, saga_settings

pytestmark = pytest.mark.chaos

OUTAGE_S = float(os.environ.get("FLASHSALE_PSP_OUTAGE_S", "30"))
RESERVATION_S = int(4 * OUTAGE_S)
BEFORE, DURING = 20, 60  # purchases confirmed before the outage, and bought during it


def _psp(saga_or_settings, log_dir, port: int, ledger) -> tuple[Process, str]:
    proc, url = fakepsp_process(saga_or_settings, log_dir, port=port, latency_ms=2, decline_rate=0,
                                timeout_rate=0, lost_rate=0)
    proc.argv += ["--ledger", str(ledger)]
    return proc, url


async def test_psp_outage_shorter_than_the_reservation_confirms_every_valid_card(system, settings, db):
    port = spare_port(settings)
    ledger = system.log_dir / "fakepsp-ledger.json"
    psp, url = _psp(settings, system.log_dir, port, ledger)
    system.processes["fakepsp"] = psp.start()
    psp.wait_http_ok(url + "/healthz")
    # A small count budget: were it what bounds the retries, the outage would spend it many
    # times over.
    s = msgspec.structs.replace(saga_settings(settings, url), psp_timeout_s=1.0,
                                payment_backoff_max_s=2.0, payment_attempts_max=3,
                                payment_start_margin_s=2.0, payment_ack_wait_s=10.0)
    system.settings = s
    saga = Saga(system, s, db, FakePspAdmin(url, s.psp_api_key))
    await saga.connect()
    try:
        saga.start_committers()
        saga.start_gateway()
        await saga.upsert_sku(BEFORE + DURING, ttl_s=RESERVATION_S)
        await saga.buy(BEFORE, "tok_visa", "a")
        await saga.until(lambda: saga.db.fetchval(
            "SELECT count(*) = $2 FROM purchases WHERE sku = $1 AND status = 'confirmed'", SKU, BEFORE))

        assert psp.proc is not None
        started = time.monotonic()
        psp.proc.send_signal(signal.SIGSTOP)  # hangs: calls time out
        await saga.buy(DURING // 2, "tok_visa", "b")
        await asyncio.sleep(OUTAGE_S / 2)
        psp.proc.send_signal(signal.SIGCONT)
        psp.stop()  # gone: connections refused (SIGTERM flushes its ledger file)
        await saga.buy(DURING // 2, "tok_visa", "c")
        await saga.until(lambda: saga.db.fetchval(
            "SELECT count(*) = $2 FROM purchases WHERE sku = $1", SKU, BEFORE + DURING))
        during = await saga.statuses()
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))
        psp, _ = _psp(settings, system.log_dir, port, ledger)
        system.processes["fakepsp"] = psp.start()
        psp.wait_http_ok(url + "/healthz")
        outage_s = time.monotonic() - started

        await saga.until(lambda: saga.all_decided(BEFORE + DURING), timeout_s=RESERVATION_S)
        statuses = await saga.statuses()
        print(f"outage {outage_s:.1f} s, reservations {RESERVATION_S} s; during the outage: "
              f"{during}; after: {statuses}; recovered in "
              f"{time.monotonic() - started - outage_s:.1f} s")
        assert during.get("reserved", 0) > 0, during  # the outage did hold payments up
        assert statuses == {"confirmed": BEFORE + DURING}, statuses
        await saga.settle_money()
        letters = await saga.js.stream_info(s.names.deadletter_stream)
        assert letters.state.messages == 0
        system.start_ingest(s)
        await still_deciding(system.base_url, s)
    finally:
        await saga.close()
