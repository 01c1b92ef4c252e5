"""Reconciliation: the PSP's ledger against the committed purchases (invariant 6).

- a capture whose purchase is not confirmed (expired, cancelled, rejected, unknown) is refunded;
- a capture for a purchase confirmed with another psp_ref is a second charge: refunded;
- an authorization left uncaptured for a purchase that is no longer reserved is voided;
- a confirmed purchase whose psp_ref has no live capture is flagged (money cannot be invented).

Safe while the sale is live: a purchase still `reserved` may be about to be confirmed, and a
capture younger than the grace period may be waiting for its refused confirm to be compensated by
the gateway, so both are left alone. Idempotent: refunds and voids use the same idempotency keys
as the gateway, and a second run finds nothing left to do. Because the keys are the same, a
refund or void whose answer got lost is simply sent again (bounded by `payment_attempts_max`);
only a PSP that keeps failing leaves an error in the report.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import Literal

import asyncpg
import msgspec

from config.settings import Settings, load
from flashsale.logs import kv
from flashsale.logs import setup as setup_logs
from gateway.psp import PaymentIntent, PaymentProvider, StripeLikePsp, retrying
from proto.messages import Status

log = logging.getLogger("gateway.reconcile")

FLAGGED_IDS_MAX = 100  # ids listed in the report; the counts are always complete


class Report(msgspec.Struct, kw_only=True):
    repair: bool
    intents_seen: int = 0
    captures_matched: int = 0
    orphan_captures: int = 0  # captured, purchase not confirmed
    duplicate_captures: int = 0  # captured, purchase confirmed with another psp_ref
    stale_authorizations: int = 0
    skipped_in_flight: int = 0  # purchase reserved, or capture within the grace period
    confirmed_without_capture: int = 0
    refunded: int = 0
    refunded_cents: int = 0
    voided: int = 0
    errors: int = 0
    confirmed_without_capture_ids: list[str] = []
    repaired_ids: list[str] = []
    duration_s: float = 0.0

    @property
    def clean(self) -> bool:
        return (self.orphan_captures + self.duplicate_captures + self.stale_authorizations
                + self.confirmed_without_capture + self.errors) == 0


class _Row(msgspec.Struct):
    status: Status
    psp_ref: str | None


async def reconcile(settings: Settings, *, repair: bool, grace_s: float | None = None,
                    psp: PaymentProvider | None = None) -> Report:
    started = time.monotonic()
    grace_s = settings.reconcile_grace_s if grace_s is None else grace_s
    own_psp = psp is None
    if psp is None:
        psp = StripeLikePsp(settings.psp_url, settings.psp_api_key,
                            timeout_s=settings.psp_timeout_s, currency=settings.psp_currency)
    conn = await asyncpg.connect(settings.database_url)
    report = Report(repair=repair)
    try:
        # Confirmed purchases first (bounded by stock sold); each capture found later ticks one
        # off, so what is left had no capture.
        unmatched: dict[str, str] = {
            r["id"]: r["psp_ref"] for r in await conn.fetch(
                "SELECT p.id, p.psp_ref FROM purchases p LEFT JOIN skus s ON s.sku = p.sku "
                "WHERE p.status = 'confirmed' AND (p.psp_ref IS NOT NULL OR s.payment = 'required')")
        }
        page: list[PaymentIntent] = []
        async for intent in psp.ledger(settings.reconcile_page_size):
            page.append(intent)
            if len(page) >= settings.reconcile_page_size:
                await _check_page(settings, conn, psp, page, unmatched, report, grace_s)
                page = []
        if page:
            await _check_page(settings, conn, psp, page, unmatched, report, grace_s)
        for purchase_id, psp_ref in unmatched.items():
            # The purchase may have been confirmed after the ledger page holding its capture was
            # read; look once more at that one intent before flagging.
            if psp_ref and await _is_live_capture(settings, psp, psp_ref, purchase_id):
                report.captures_matched += 1
                continue
            report.confirmed_without_capture += 1
            if len(report.confirmed_without_capture_ids) < FLAGGED_IDS_MAX:
                report.confirmed_without_capture_ids.append(purchase_id)
            log.error("confirmed purchase without a capture",
                      extra=kv(purchase_id=purchase_id, psp_ref=psp_ref))
    finally:
        await conn.close()
        if own_psp:
            await psp.close()
    report.duration_s = round(time.monotonic() - started, 3)
    return report


async def _is_live_capture(settings: Settings, psp: PaymentProvider, psp_ref: str,
                           purchase_id: str) -> bool:
    try:
        intent = await retrying(settings, "retrieve", lambda: psp.retrieve(psp_ref))
    except Exception:
        return False  # gone (404), unreachable or unreadable: flagged, for a human to look at
    return intent.purchase_id == purchase_id and intent.net_captured_cents > 0


async def _check_page(settings: Settings, conn: asyncpg.Connection, psp: PaymentProvider,
                      page: list[PaymentIntent], unmatched: dict[str, str], report: Report,
                      grace_s: float) -> None:
    # Read the purchases after the ledger page: a capture listed before its confirm committed is
    # then seen either as confirmed (matched) or as reserved (skipped), never as an orphan.
    ids = list({i.purchase_id for i in page if i.purchase_id})
    rows = {r["id"]: _Row(r["status"], r["psp_ref"]) for r in await conn.fetch(
        "SELECT id, status, psp_ref FROM purchases WHERE id = ANY($1::text[])", ids)}
    now_s = time.time()
    for intent in page:
        report.intents_seen += 1
        purchase_id = intent.purchase_id
        if purchase_id is None:
            continue  # not ours
        row = rows.get(purchase_id)
        if intent.net_captured_cents > 0:
            if row is not None and row.status == "confirmed" and row.psp_ref == intent.id:
                report.captures_matched += 1
                unmatched.pop(purchase_id, None)
                continue
            if row is not None and row.status == "confirmed":
                report.duplicate_captures += 1
            elif (row is not None and row.status == "reserved") or now_s - intent.created < grace_s:
                report.skipped_in_flight += 1
                continue
            else:
                report.orphan_captures += 1
            if report.repair:
                await _repair(settings, psp, report, purchase_id, intent, "refund")
        elif intent.status == "requires_capture":
            if (row is not None and row.status == "reserved") or now_s - intent.created < grace_s:
                report.skipped_in_flight += 1
                continue
            report.stale_authorizations += 1
            if report.repair:
                await _repair(settings, psp, report, purchase_id, intent, "void")


async def _repair(settings: Settings, psp: PaymentProvider, report: Report, purchase_id: str,
                  intent: PaymentIntent, action: Literal["refund", "void"]) -> None:
    try:
        if action == "refund":
            refund = await retrying(settings, "refund", lambda: psp.refund(purchase_id, intent.id))
            if refund is not None:
                report.refunded += 1
                report.refunded_cents += refund.amount
        else:
            await retrying(settings, "void", lambda: psp.void(purchase_id, intent.id))
            report.voided += 1
    except Exception as e:
        report.errors += 1
        log.error("repair failed",
                  extra=kv(purchase_id=purchase_id, psp_ref=intent.id, action=action, error=str(e)))
        return
    if len(report.repaired_ids) < FLAGGED_IDS_MAX:
        report.repaired_ids.append(intent.id)
    log.warning("repaired", extra=kv(purchase_id=purchase_id, psp_ref=intent.id, action=action))


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    """`flashsale reconcile [--dry-run] [--grace-s S] [--every S]`; prints one JSON report per
    run; exit status 1 if something needs a human (flagged or failed). `settings`: those of the
    caller (`flashsale reconcile` next to `flashsale dev`); None: loaded from the environment."""
    parser = argparse.ArgumentParser(prog="flashsale reconcile")
    parser.add_argument("--dry-run", action="store_true", help="report only, move no money")
    parser.add_argument("--grace-s", type=float, help="leave captures younger than this alone")
    parser.add_argument("--every", type=float, metavar="S", help="run again every S seconds")
    args = parser.parse_args(argv)
    settings = settings or load()
    setup_logs("reconcile", settings.log_level)

    async def loop() -> int:
        while True:
            try:
                report = await reconcile(settings, repair=not args.dry_run, grace_s=args.grace_s)
            except Exception as e:
                if args.every is None:
                    raise
                log.error("reconciliation run failed", extra=kv(error=repr(e)))
            else:
                sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
                sys.stdout.flush()
                if args.every is None:
                    return 0 if report.confirmed_without_capture + report.errors == 0 else 1
            await asyncio.sleep(args.every)

    return asyncio.run(loop())


if __name__ == "__main__":
    sys.exit(main())
