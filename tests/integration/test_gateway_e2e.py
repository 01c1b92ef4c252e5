"""The payment saga end to end: real committers, the gateway and the fake PSP as real processes,
real NATS JetStream and Postgres. Purchases are published straight to the shard's intent subject
(ingest's own tests cover the HTTP edge), which keeps the 2,000 buyers cheap on a small machine.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field

import asyncpg
import msgspec
import nats
import pytest

from config.settings import Settings
from gateway.fakepsp.client import FakePspAdmin
from gateway.reconcile import reconcile
from launch.processes import fakepsp_process, gateway_process, gateway_ready_url, spare_port
from proto.messages import Purchase, SkuUpsert, encode
from proto.sharding import shard_of
from tests.util import eventually

SKU = "hot"
PRICE_CENTS = 1000


def saga_settings(settings: Settings, psp_url: str) -> Settings:
    port = spare_port(settings)
    return msgspec.structs.replace(
        settings, psp_url=psp_url, psp_timeout_s=0.3, payment_backoff_base_s=0.05,
        payment_backoff_max_s=0.5, payment_attempts_max=8, payment_start_margin_s=1.0,
        payment_ack_wait_s=3.0, gateway_concurrency=64, gateway_metrics_port=port,
    )


@dataclass
class Saga:
    system: object
    settings: Settings
    db: object
    admin: FakePspAdmin
    js: object = None
    nc: object = None
    peak_held: int = 0  # highest reserved + confirmed seen in purchases during the run
    violations: list[str] = field(default_factory=list)

    def start_gateway(self, name: str = "gateway", metrics_port: int | None = None):
        p = gateway_process(self.settings, self.system.log_dir, name, metrics_port).start()
        self.system.processes[name] = p
        p.wait_http_ok(gateway_ready_url(self.settings, metrics_port))
        return p

    def start_committers(self) -> None:
        # Each on a port picked just before it binds: `committer_metrics_port + shard` is not
        # reserved, and a client socket's ephemeral port sometimes takes it first.
        for shard in range(self.settings.shards):
            self.system.start_committer(shard, status_port=spare_port(self.settings))

    async def connect(self) -> None:
        self.nc = await nats.connect(self.settings.nats_url)
        self.js = self.nc.jetstream()

    async def upsert_sku(self, stock: int, ttl_s: int) -> None:
        rid = "r_" + secrets.token_hex(4)
        upsert = SkuUpsert(request_id=rid, sku=SKU, stock=stock, price_cents=PRICE_CENTS,
                           payment="required", reservation_ttl_s=ttl_s)
        await self.js.publish(self.settings.names.intent(self.shard, "sku_upsert", rid), encode(upsert))
        await self.until(lambda: self.db.fetchval("SELECT count(*) = 1 FROM skus WHERE sku = $1", SKU))

    @property
    def shard(self) -> int:
        return shard_of(SKU, self.settings.shards)

    async def buy(self, buyers: int, token: str, wave: str) -> list[str]:
        now = int(time.time() * 1000)
        ids = [f"p_{wave}{i:05d}" for i in range(buyers)]

        async def one(pid: str) -> None:
            p = Purchase(id=pid, sku=SKU, qty=1, user_id=f"u_{pid}", request_hash="h",
                         accepted_at_ms=now, payment_token=token)
            await self.js.publish(self.settings.names.intent(self.shard, "purchase", pid), encode(p))

        for i in range(0, buyers, 250):
            await asyncio.gather(*(one(pid) for pid in ids[i:i + 250]))
        return ids

    async def until(self, predicate, timeout_s: float = 60.0, interval_s: float = 0.1):
        return await eventually(predicate, timeout_s, interval_s)

    async def watch_stock(self, stop: asyncio.Event) -> None:
        """Invariant 1 sampled all along (the schema's CHECK enforces it on skus; this checks
        the purchases themselves)."""
        conn = await asyncpg.connect(self.settings.database_url)  # the test uses self.db
        try:
            while not stop.is_set():
                # One statement, one snapshot: stock and purchases seen at the same instant.
                row = await conn.fetchrow(
                    "SELECT (SELECT coalesce(sum(qty), 0) FROM purchases WHERE sku = $1"
                    " AND status IN ('reserved', 'confirmed')) AS held,"
                    " (SELECT stock FROM skus WHERE sku = $1) AS stock", SKU)
                self.peak_held = max(self.peak_held, row["held"])
                if row["held"] > row["stock"]:
                    self.violations.append(f"held {row['held']} > stock {row['stock']}")
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    async def all_decided(self, count: int) -> bool:
        row = await self.db.fetchrow(
            "SELECT count(*) AS n, count(*) FILTER (WHERE status = 'reserved') AS open"
            " FROM purchases WHERE sku = $1", SKU)
        return row["n"] >= count and row["open"] == 0

    async def statuses(self) -> dict[str, int]:
        rows = await self.db.fetch(
            "SELECT status || coalesce(':' || reason, '') AS s, count(*) AS n FROM purchases"
            " WHERE sku = $1 GROUP BY 1", SKU)
        return {r["s"]: r["n"] for r in rows}

    async def money_squares(self) -> str | None:
        """None when every live capture matches exactly one confirmed purchase and back."""
        captures: dict[str, list[str]] = {}
        for pi in self.admin.ledger():
            if pi.net_captured_cents > 0:
                captures.setdefault(pi.purchase_id, []).append(pi.id)
        confirmed = {r["id"]: r["psp_ref"] for r in await self.db.fetch(
            "SELECT id, psp_ref FROM purchases WHERE status = 'confirmed' AND sku = $1", SKU)}
        doubles = {p: refs for p, refs in captures.items() if len(refs) > 1}
        if doubles:
            return f"charged twice: {list(doubles.items())[:3]}"
        uncaptured = [p for p, ref in confirmed.items() if captures.get(p) != [ref]]
        if uncaptured:
            return f"confirmed without its capture: {uncaptured[:5]}"
        orphans = [p for p in captures if p not in confirmed]
        if orphans:
            return f"captured but not confirmed: {orphans[:5]}"
        return None

    async def settle_money(self, timeout_s: float = 20.0) -> None:
        # Refused confirms are refunded asynchronously by the gateway: give it a moment.
        deadline = time.monotonic() + timeout_s
        while (problem := await self.money_squares()) is not None:
            if time.monotonic() > deadline:
                raise AssertionError(problem)
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


# A flaky PSP: declines 20%, times out 10%, loses 5% of its answers.
FLAKY = dict(decline_rate=0.2, timeout_rate=0.1, lost_rate=0.05, hang_s=0.6, seed=5)


async def make_saga(system, settings: Settings, db, latency_ms: float = 2,
                    **overrides) -> Saga:
    proc, url = fakepsp_process(settings, system.log_dir, latency_ms=latency_ms, **FLAKY)
    proc.start()
    system.processes["fakepsp"] = proc
    proc.wait_http_ok(url + "/healthz")
    s = msgspec.structs.replace(saga_settings(settings, url), **overrides)
    system.settings = s  # committers and gateways started later share these
    saga = Saga(system, s, db, FakePspAdmin(url, s.psp_api_key))
    await saga.connect()
    return saga


@pytest.fixture
async def saga(system, settings, db):
    saga = await make_saga(system, settings, db)
    yield saga
    await saga.close()


async def run_two_waves(saga: Saga, stock: int, buyers: int, chaos=None) -> dict:
    """Wave 1: `buyers` race for `stock` through a flaky PSP. Wave 2: exactly the stock that
    came back is bought with tok_visa. Returns figures for the report."""
    await saga.upsert_sku(stock, ttl_s=30)
    stop = asyncio.Event()
    watcher = asyncio.create_task(saga.watch_stock(stop))
    started = time.monotonic()
    await saga.buy(buyers, "tok_any", "a")
    if chaos is not None:
        await chaos(saga)
    await saga.until(lambda: saga.all_decided(buyers), timeout_s=60)
    wave1_s = time.monotonic() - started
    first = await saga.statuses()
    confirmed = first.get("confirmed", 0)
    returned = stock - confirmed
    sku = await saga.db.fetchrow("SELECT stock, reserved, sold FROM skus WHERE sku = $1", SKU)
    assert (sku["reserved"], sku["sold"]) == (0, confirmed), (dict(sku), first)
    assert first.get("rejected:payment_declined", 0) > 0 and returned > 0, first
    assert sum(first.values()) == buyers
    await saga.settle_money()

    # Wave 2: twice as many buyers as units came back; they get exactly those units.
    await saga.buy(2 * returned, "tok_visa", "b")
    await saga.until(lambda: saga.all_decided(buyers + 2 * returned), timeout_s=40)
    stop.set()
    await watcher
    final = await saga.statuses()
    assert final.get("confirmed", 0) == stock, final
    assert await saga.db.fetchval("SELECT sold FROM skus WHERE sku = $1", SKU) == stock
    await saga.settle_money()
    assert not saga.violations, saga.violations[:3]
    assert saga.peak_held <= stock
    return {"wave1": first, "wave1_s": round(wave1_s, 1), "final": final,
            "psp": saga.admin.stats(), "peak_held": saga.peak_held}


async def test_flaky_psp_two_waves_money_squares(system, saga: Saga):
    saga.start_committers()
    saga.start_gateway()
    figures = await run_two_waves(saga, stock=300, buyers=2000)
    print("figures:", figures)
    stats = figures["psp"]
    assert stats.get("timeouts", 0) > 0 and stats.get("lost_responses", 0) > 0
    await assert_reconciled(saga)


async def assert_reconciled(saga: Saga) -> None:
    """Reconciliation agrees the money squares. The one thing it may still have to do is void
    authorizations whose answer came back after the gateway gave up on them (their purchases
    were released as payment_failed): a hold, never a charge."""
    report = await reconcile(saga.settings, repair=True, grace_s=0)
    print("reconcile:", msgspec.json.encode(report).decode())
    assert report.captures_matched == 300
    assert (report.orphan_captures, report.duplicate_captures, report.confirmed_without_capture,
            report.refunded, report.errors) == (0, 0, 0, 0, 0), report
    failed = await saga.db.fetchval("SELECT count(*) FROM purchases WHERE reason = 'payment_failed'")
    assert report.voided == report.stale_authorizations <= failed
    again = await reconcile(saga.settings, repair=True, grace_s=0)
    assert again.clean and again.voided == 0, again


async def test_unpaid_reservations_expire_on_time_and_sell_again(system, saga: Saga):
    saga.start_committers()  # no gateway yet: nobody pays
    ttl_s = 2
    await saga.upsert_sku(20, ttl_s=ttl_s)
    ids = await saga.buy(30, "tok_visa", "a")
    await saga.until(lambda: saga.db.fetchval(
        "SELECT count(*) = 30 FROM purchases WHERE sku = $1", SKU))
    rows = await saga.db.fetch("SELECT status, decided_at_ms, expires_at_ms FROM purchases"
                               " WHERE sku = $1 AND status = 'reserved'", SKU)
    assert len(rows) == 20
    assert all(r["expires_at_ms"] - r["decided_at_ms"] == ttl_s * 1000 for r in rows)
    deadline_ms = max(r["expires_at_ms"] for r in rows)
    await saga.until(lambda: saga.db.fetchval(
        "SELECT count(*) = 20 FROM purchases WHERE sku = $1 AND status = 'expired'", SKU),
        timeout_s=ttl_s + 5, interval_s=0.05)
    late_ms = time.time() * 1000 - deadline_ms
    assert late_ms < 1500, f"expired {late_ms:.0f} ms after the deadline"
    assert await saga.db.fetchval("SELECT reserved FROM skus WHERE sku = $1", SKU) == 0

    # The gateway now sees 20 stale jobs: it must not charge any of them.
    saga.start_gateway()
    await saga.buy(40, "tok_visa", "b")
    await saga.until(lambda: saga.all_decided(70))
    statuses = await saga.statuses()
    assert statuses["confirmed"] == 20 and statuses["expired:ttl_passed"] == 20, statuses
    charged = {pi.purchase_id for pi in saga.admin.ledger()}
    assert not charged & set(ids), "an expired reservation was charged"
    await saga.settle_money()


async def test_confirm_after_expiry_is_refused_and_refunded(system, settings, db):
    # Authorizing is instant, capturing takes 4 s, the reservation lives 2 s: the capture starts
    # in time and lands 2 s after the deadline, so the committer has expired the purchase when
    # the confirm comes.
    saga = await make_saga(system, settings, db, psp_timeout_s=6.0, payment_start_margin_s=0.5)
    try:
        saga.admin.set_rates(decline_rate=0, timeout_rate=0, lost_rate=0, capture_latency_ms=4000)
        saga.start_committers()
        saga.start_gateway()
        await saga.upsert_sku(1, ttl_s=2)
        [late] = await saga.buy(1, "tok_visa", "late")
        await saga.until(lambda: saga.db.fetchval(
            "SELECT status = 'expired' FROM purchases WHERE id = $1", late), timeout_s=15)
        # The gateway hears the refusal and gives the money back.
        async def refunded() -> bool:
            intents = [pi for pi in saga.admin.ledger() if pi.purchase_id == late]
            return len(intents) == 1 and intents[0].amount_received == PRICE_CENTS \
                and intents[0].amount_refunded == PRICE_CENTS
        await saga.until(refunded, timeout_s=20)
        await saga.settle_money()
        assert await saga.db.fetchval("SELECT reserved + sold FROM skus WHERE sku = $1", SKU) == 0
    finally:
        await saga.close()


async def test_buyer_path_through_ingest(system, saga: Saga):
    """The buyer's view: reserved with a deadline, then confirmed or rejected: payment_declined;
    a reservation cancelled before the gateway gets to it is never charged."""
    import aiohttp

    from tests.integration.test_ingest_flow import Client

    saga.admin.set_rates(decline_rate=0, timeout_rate=0, lost_rate=0)
    saga.start_committers()
    system.start_ingest()
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, saga.settings.admin_token)
        status, _, _ = await c.put_sku(SKU, stock=3, price_cents=PRICE_CENTS, payment="required",
                                       reservation_ttl_s=60)
        assert status == 200
        ids = {}
        for user, token in (("alice", "tok_visa"), ("bob", "tok_visa"), ("carol", "tok_chargeDeclined")):
            status, _, p = await c.buy(SKU, user, "k1", payment_token=token)
            assert status == 200 and p["status"] == "reserved" and p["expires_at"], p
            ids[user] = p["id"]
        status, _, bob = await c.call("POST", f"/v1/purchases/{ids['bob']}/cancel",
                                      headers={"Prefer": "wait=5"}, user="bob")
        assert status == 200 and bob["status"] == "cancelled", bob

        saga.start_gateway()  # only now do the payment jobs get worked on

        async def state(user: str) -> dict:
            _, _, p = await c.call("GET", f"/v1/purchases/{ids[user]}?wait=5", user=user)
            return p if p["status"] != "reserved" else {}

        alice = await saga.until(lambda: state("alice"), timeout_s=20)
        carol = await saga.until(lambda: state("carol"), timeout_s=20)
        assert alice["status"] == "confirmed" and alice["amount_cents"] == PRICE_CENTS, alice
        assert (carol["status"], carol["reason"]) == ("rejected", "payment_declined"), carol
        status, _, sku = await c.call("GET", f"/v1/skus/{SKU}")
        assert sku["remaining"] == 2 and sku["reserved"] == 0, sku
    charged = {pi.purchase_id for pi in saga.admin.ledger()}
    assert ids["bob"] not in charged, "a cancelled reservation was charged"
    await saga.settle_money()
