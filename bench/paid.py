"""The `paid` scenario: purchases of a SKU with `payment = "required"`, through the whole saga.

flashsale only (the baselines have no payment path). Beside ingest and the committers it starts
the payment gateway (`python -m gateway`) and the fake PSP (`python -m gateway.fakepsp`) as real
processes (launch/processes.py's launchers). One open-loop phase of buyers who each POST once with a
card token and `Prefer: wait=5` (so every answer carries `reserved`: the decision latency); then
the harness waits until no purchase is `reserved` (bounded by the reservation TTL), takes the
payment latency and outcomes from Postgres and checks the money against the fake PSP's ledger.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import asyncpg
import msgspec
import nats
import psutil

from bench.flashsale_system import Flashsale, start_flashsale
from bench.stats import LatencySummary, summarize
from bench.systems import Place, put_skus
from gateway.fakepsp.client import FakePspAdmin
from gateway.psp import PaymentIntent
from launch.processes import Process, fakepsp_process, gateway_process, gateway_ready_url, spare_port

PAID_SKU = "paid-0"
PAID_STOCK = 2_000
PAID_TTL_S = 30
PAID_PRICE_CENTS = 1_000
PAID_RATE = 200.0  # buyers/s: 10 s x 200 = the stock, so it is (almost) all sold, never sold out
# Cycled by request number: 7/10 tok_visa (always captured), 1/10 tok_chargeDeclined (always
# declined), 2/10 another token, which follows the fake PSP's failure rates below.
PAID_TOKENS = ["tok_visa"] * 7 + ["tok_chargeDeclined"] + ["tok_flaky"] * 2
# For "tok_flaky" calls only (the fake PSP never fails tok_visa / tok_chargeDeclined): 15%
# timeouts + 10% lost answers of 1 in 5 buyers' calls ~ 5% of all PSP calls. Latency on every call.
PSP_RATES: dict[str, float] = dict(latency_ms=20, decline_rate=0.0, timeout_rate=0.15, lost_rate=0.10,
                                   hang_s=1.0, seed=7)
# The gateway's side (as in tests/integration/test_gateway_e2e.py): a timeout well under hang_s,
# short backoff, so a lost answer costs ~1 s, not the production 10 s timeout.
GATEWAY_SETTINGS = dict(psp_timeout_s=0.5, payment_backoff_base_s=0.05, payment_backoff_max_s=0.5,
                        payment_attempts_max=8, payment_start_margin_s=1.0)
FINAL_OUTCOMES = ["confirmed", "rejected:payment_declined", "cancelled:payment_failed", "expired:ttl_passed"]
SETTLE_EXTRA_S = 15.0  # past the TTL: time for the last confirms/releases to be committed
MONEY_SETTLE_S = 15.0  # refunds of refused confirms are asynchronous: time for them to land


class PaidFigures(msgspec.Struct, kw_only=True):
    """What the paid scenario measured after the drain. The `*` money counts must all be 0."""

    sku: str = PAID_SKU
    stock: int = PAID_STOCK
    ttl_s: int = PAID_TTL_S
    tokens: dict[str, int] = {}  # token -> share of buyers, in tenths
    psp_rates: dict[str, float] = {}
    purchases: int = 0
    by_status: dict[str, int] = {}  # status[:reason] -> purchases
    settled: bool = False  # no purchase left `reserved`
    settle_s: float | None = None  # from the end of the load until none was `reserved`
    confirmed: int = 0
    confirmed_per_s: float | None = None  # confirmations from the load's start to the last one
    confirmed_per_s_in_load: float | None = None  # confirmations inside the load window / its length
    reserve_db: LatencySummary = msgspec.field(default_factory=LatencySummary)  # decided - accepted
    # confirmed: updated - accepted
    confirm_db: LatencySummary = msgspec.field(default_factory=LatencySummary)
    psp_stats: dict[str, int] = {}  # the fake PSP's /admin/stats
    ledger_intents: int = 0
    captures: int = 0  # intents with money kept (received - refunded > 0)
    refunded_intents: int = 0
    cpu_s: dict[str, float] = {}  # CPU seconds of gateway / fakepsp from start to the checks
    reconcile: dict[str, int] = {}  # a dry run of `flashsale reconcile --grace-s 0` afterwards
    # money invariants (all must be 0)
    captured_twice: int = 0  # purchase ids with more than one live capture
    confirmed_without_capture: int = 0  # confirmed, but its psp_ref is not its one capture
    captured_not_confirmed: int = 0  # money kept for a purchase that is not confirmed
    still_reserved: int = 0  # purchases `reserved` after the settle wait
    stock_not_returned: int = 0  # |skus.reserved| + |skus.sold - confirmed qty|: stock held by non-confirmed
    oversold: int = 0  # reserved + sold > stock on the SKU

    def violations(self) -> int:
        return (self.captured_twice + self.confirmed_without_capture + self.captured_not_confirmed
                + self.still_reserved + self.stock_not_returned + self.oversold)


def token_mix(tokens: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tokens:
        out[t] = out.get(t, 0) + 1
    return out


def money_check(ledger: list[PaymentIntent], confirmed: dict[str, str | None]) -> dict[str, int]:
    """Captures in the ledger vs confirmed purchases (id -> psp_ref). Pure: unit-tested."""
    captures: dict[str, list[str]] = {}
    refunded = 0
    for pi in ledger:
        if pi.amount_refunded > 0:
            refunded += 1
        if pi.net_captured_cents > 0:
            captures.setdefault(pi.purchase_id or "", []).append(pi.id)
    return {
        "ledger_intents": len(ledger),
        "captures": sum(len(v) for v in captures.values()),
        "refunded_intents": refunded,
        "captured_twice": sum(1 for v in captures.values() if len(v) > 1),
        "confirmed_without_capture": sum(1 for p, ref in confirmed.items() if captures.get(p) != [ref]),
        "captured_not_confirmed": sum(1 for p in captures if p not in confirmed),
    }


@dataclass(kw_only=True)
class FlashsalePaid(Flashsale):
    """Flashsale plus one gateway and the fake PSP."""

    psp_url: str
    admin: FakePspAdmin

    @classmethod
    async def launch_paid(cls, place: Place, processes: list[Process], shards: int,
                          ingests: int) -> FlashsalePaid:
        settings, _, metrics_urls = await start_flashsale(place, processes, shards, ingests)
        log_dir = place.root / "logs" / f"paid-{settings.namespace}"
        psp, psp_url = fakepsp_process(settings, log_dir, port=None, name="fakepsp", **PSP_RATES)
        processes.append(psp.start())
        await asyncio.to_thread(psp.wait_http_ok, psp_url + "/healthz")
        metrics_port = spare_port(settings)
        settings = msgspec.structs.replace(settings, psp_url=psp_url, **GATEWAY_SETTINGS)
        gw = gateway_process(settings, log_dir, metrics_port=metrics_port)
        processes.append(gw.start())
        await asyncio.to_thread(gw.wait_http_ok, gateway_ready_url(settings, metrics_port))
        nc = await nats.connect(servers=place.nats.servers)
        return cls(name=place.name, root=place.root, postgres=place.postgres, nats=place.nats,
                   port=settings.ingest_port, database_url=settings.database_url, processes=processes,
                   shards=shards, ingests=ingests, settings=settings, nc=nc, js=nc.jetstream(),
                   http=aiohttp.ClientSession(), metrics_urls=metrics_urls, psp_url=psp_url,
                   admin=FakePspAdmin(psp_url, settings.psp_api_key))

    async def seed(self, stock_by_sku: dict[str, int]) -> None:
        await put_skus(self.base_url, stock_by_sku,
                            {"Authorization": f"Bearer {self.settings.admin_token}"},
                            {"payment": "required", "reservation_ttl_s": PAID_TTL_S,
                             "price_cents": PAID_PRICE_CENTS})
        conn = await asyncpg.connect(self.database_url)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if await conn.fetchval("SELECT count(*) FROM skus WHERE sku = ANY($1::text[])"
                                       " AND payment = 'required'", list(stock_by_sku)) == len(stock_by_sku):
                    return
                await asyncio.sleep(0.1)
            raise TimeoutError("the paid SKU did not reach Postgres")
        finally:
            await conn.close()

    async def paid_figures(self, start_ms: int, end_ms: int) -> PaidFigures:
        """Wait until nothing is `reserved` (bounded by the TTL), then measure and check."""
        f = PaidFigures(tokens=token_mix(PAID_TOKENS), psp_rates=dict(PSP_RATES))
        conn = await asyncpg.connect(self.database_url)
        try:
            await _wait_settled(conn, f, end_ms)
            await _outcomes(conn, f, start_ms, end_ms)
            await self._check_money(conn, f)
            await _check_stock(conn, f)
        finally:
            await conn.close()
        f.psp_stats = await asyncio.to_thread(self.admin.stats)
        f.cpu_s = self._payment_cpu_s()
        f.reconcile = await self._reconcile_dry_run()
        return f

    async def _check_money(self, conn: asyncpg.Connection, f: PaidFigures) -> None:
        """Captures in the fake PSP's ledger vs confirmed purchases, once the refunds landed."""
        until = time.monotonic() + MONEY_SETTLE_S
        while True:
            confirmed = {r["id"]: r["psp_ref"] for r in await conn.fetch(
                "SELECT id, psp_ref FROM purchases WHERE status = 'confirmed'")}
            m = money_check(await asyncio.to_thread(self.admin.ledger), confirmed)
            bad = m["captured_twice"] + m["confirmed_without_capture"] + m["captured_not_confirmed"]
            if bad == 0 or time.monotonic() > until:
                break
            await asyncio.sleep(0.5)
        for k, v in m.items():
            setattr(f, k, v)

    def _payment_cpu_s(self) -> dict[str, float]:
        """CPU seconds of the gateway and the fake PSP since they started."""
        cpu_s: dict[str, float] = {}
        for p in self.processes:
            if p.name in ("gateway", "fakepsp") and p.proc is not None:
                try:
                    t = psutil.Process(p.proc.pid).cpu_times()
                    cpu_s[p.name] = round(t.user + t.system, 1)
                except psutil.Error:
                    pass
        return cpu_s

    async def _reconcile_dry_run(self) -> dict[str, int]:
        try:
            from gateway.reconcile import reconcile

            report = await reconcile(self.settings, repair=False, grace_s=0)
            return {k: v for k, v in msgspec.to_builtins(report).items()
                    if isinstance(v, int) and not isinstance(v, bool)}
        except Exception as e:  # a cross-check only: the figures above stand on their own
            print(f"bench: reconcile dry run failed: {type(e).__name__}: {e}")
            return {"error": 1}


async def _wait_settled(conn: asyncpg.Connection, f: PaidFigures, end_ms: int) -> None:
    """Until no purchase is `reserved`, bounded by the TTL (+ time for the last commits)."""
    deadline = time.monotonic() + PAID_TTL_S + SETTLE_EXTRA_S
    while True:
        open_ = await conn.fetchval("SELECT count(*) FROM purchases WHERE status = 'reserved'")
        if open_ == 0:
            f.settled = True
            f.settle_s = round(time.time() - end_ms / 1000, 1)
            break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    f.still_reserved = open_


async def _outcomes(conn: asyncpg.Connection, f: PaidFigures, start_ms: int, end_ms: int) -> None:
    """Purchases by outcome, reserve and confirm latency, and the confirmation rate."""
    rows = await conn.fetch("SELECT status || coalesce(':' || reason, '') AS s, count(*) AS n"
                            " FROM purchases GROUP BY 1 ORDER BY 2 DESC")
    # The outcomes the scenario is about are listed even when none happened.
    f.by_status = {**dict.fromkeys(FINAL_OUTCOMES, 0), **{r["s"]: r["n"] for r in rows}}
    f.purchases = sum(f.by_status.values())
    lat = await conn.fetch("SELECT decided_at_ms - accepted_at_ms AS r, status,"
                           " updated_at_ms - accepted_at_ms AS c, updated_at_ms AS u"
                           " FROM purchases WHERE accepted_at_ms >= $1", start_ms)
    f.reserve_db = summarize([float(r["r"]) for r in lat])
    conf = [r for r in lat if r["status"] == "confirmed"]
    f.confirmed = len(conf)
    f.confirm_db = summarize([float(r["c"]) for r in conf])
    if conf:
        last = max(r["u"] for r in conf)
        f.confirmed_per_s = round(len(conf) / max(0.001, (last - start_ms) / 1000), 1)
        in_load = sum(1 for r in conf if r["u"] < end_ms)
        f.confirmed_per_s_in_load = round(in_load / max(0.001, (end_ms - start_ms) / 1000), 1)


async def _check_stock(conn: asyncpg.Connection, f: PaidFigures) -> None:
    """Stock held by purchases that are not confirmed, and overselling, on the paid SKU."""
    sku = await conn.fetchrow("SELECT stock, reserved, sold FROM skus WHERE sku = $1", PAID_SKU)
    if sku is None:
        raise RuntimeError(f"the paid SKU {PAID_SKU} is not in Postgres")
    sold_qty = await conn.fetchval("SELECT coalesce(sum(qty), 0) FROM purchases"
                                   " WHERE status = 'confirmed' AND sku = $1", PAID_SKU)
    f.stock_not_returned = sku["reserved"] + abs(sku["sold"] - sold_qty)
    f.oversold = int(sku["reserved"] + sku["sold"] > sku["stock"])
