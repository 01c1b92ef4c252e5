"""A crowd of buyers for the invariant tests, and the checks that run on Postgres afterwards.
Fault scenarios mix hostile buyers into it (tests/hostile.py) and add tests/history.py's
`check_history` (results stream against Postgres)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import asyncpg

from tests.auth import bearer
from tests.auth import pid as purchase_id
from tests.history import check_stored
from tests.hostile import Hostile

FINAL = {"confirmed", "rejected", "expired", "cancelled"}


@dataclass
class Attempt:
    user: str
    key: str
    body: dict
    status: int = 0
    id: str | None = None
    state: str | None = None
    conflict_expected: bool = False


@dataclass
class FloodResult:
    attempts: list[Attempt] = field(default_factory=list)
    hostile: Hostile | None = None  # the hostile buyers mixed into the flood, if any

    def by_status(self) -> Counter:
        return Counter(a.status for a in self.attempts)

    def accepted(self) -> dict[str, list[Attempt]]:
        out: dict[str, list[Attempt]] = {}
        for a in self.attempts:
            if a.status in (200, 202):
                out.setdefault(a.id, []).append(a)  # type: ignore[arg-type]
        return out


def plan(sku: str, requests: int, users: int, retry_share: float = 0.25,
         conflict_share: float = 0.02, seed: int = 7) -> list[Attempt]:
    """`requests` POSTs: first clicks, retries of earlier clicks (same key and body), and a few
    reuses of a key with another body (must be 422)."""
    rng = random.Random(seed)
    firsts: list[Attempt] = []
    out: list[Attempt] = []
    for i in range(requests):
        roll = rng.random()
        if firsts and roll < retry_share:
            orig = rng.choice(firsts)
            out.append(Attempt(orig.user, orig.key, dict(orig.body)))
        elif firsts and roll < retry_share + conflict_share:
            orig = rng.choice(firsts)
            out.append(Attempt(orig.user, orig.key, {**orig.body, "qty": orig.body["qty"] + 1},
                               conflict_expected=True))
        else:
            user = f"user-{rng.randrange(users)}"
            a = Attempt(user, f"key-{i}", {"sku": sku, "qty": 1, "user_id": user})
            firsts.append(a)
            out.append(a)
    return out


async def post_all(base_url: str, attempts: list[Attempt], concurrency: int = 200,
                   wait_s: int = 0, deadline_s: float = 120.0,
                   hostile: Hostile | None = None) -> FloodResult:
    """Clicks and same-body retries race each other; key reuses with another body go after
    them, so which body is 'the original' is well defined. `hostile` buyers (tests/hostile.py)
    send their requests all along; `check_invariants` then checks them too."""
    mischief = None
    if hostile is not None:
        if not hostile.skus:  # a scenario may set them up before it breaks something
            async with aiohttp.ClientSession() as http:
                await hostile.setup(http, base_url)
        mischief = asyncio.create_task(hostile.run([purchase_id(a.user, a.key) for a in attempts]))
    try:
        await _post(base_url, [a for a in attempts if not a.conflict_expected], concurrency, wait_s,
                    deadline_s)
        await _post(base_url, [a for a in attempts if a.conflict_expected], concurrency, wait_s,
                    deadline_s)
    finally:
        if hostile is not None and mischief is not None:
            hostile.stopping.set()
            await mischief
    return FloodResult(attempts, hostile)


async def _post(base_url: str, attempts: list[Attempt], concurrency: int, wait_s: int,
                deadline_s: float) -> None:
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    stop_at = time.monotonic() + deadline_s
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(a: Attempt) -> None:
            async with sem:
                headers = {"Idempotency-Key": a.key, **bearer(a.user)}
                if wait_s:
                    headers["Prefer"] = f"wait={wait_s}"
                # A buyer's app retries on overload and on timeouts; so do we, boundedly.
                while time.monotonic() < stop_at:
                    try:
                        async with http.post(f"{base_url}/v1/purchases", json=a.body,
                                             headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as r:
                            a.status = r.status
                            body = await r.json(content_type=None)
                    except (TimeoutError, aiohttp.ClientError):
                        a.status = -1
                        await asyncio.sleep(0.2)
                        continue
                    if r.status in (429, 503):
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                        continue
                    if r.status in (200, 202):
                        a.id = body["id"]
                        a.state = body["status"]
                    return

        await asyncio.gather(*(one(a) for a in attempts))


async def wait_all_final(db: asyncpg.Connection, ids: set[str], timeout_s: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout_s
    rows: dict = {}
    while time.monotonic() < deadline:
        got = await db.fetch(
            "SELECT id, status, reason, user_id, qty, sku FROM purchases WHERE id = ANY($1)", list(ids))
        rows = {r["id"]: r for r in got}
        settled = all(r["status"] in FINAL or r["status"] == "reserved" for r in rows.values())
        if len(rows) == len(ids) and settled:
            return rows
        await asyncio.sleep(0.25)
    missing = ids - set(rows)
    raise AssertionError(f"{len(missing)} accepted purchases never decided, e.g. {sorted(missing)[:3]}")


async def check_invariants(db: asyncpg.Connection, result: FloodResult, sku: str, stock: int,
                           max_per_user: int | None) -> dict:
    """The SPEC invariants, asserted on what Postgres holds."""
    accepted = result.accepted()
    # Every retry with the same key landed on the same, derived id; conflicts were 422s.
    # 409 is ingest's sold-out fast path: answered without creating a purchase.
    sold_out_fast: set[str] = set()
    for a in result.attempts:
        if a.conflict_expected and purchase_id(a.user, a.key) in accepted:
            assert a.status == 422, f"key reuse with another body got {a.status}"
        elif a.status in (200, 202):
            assert a.id == purchase_id(a.user, a.key)
        elif a.status == 409:
            sold_out_fast.add(purchase_id(a.user, a.key))
        else:
            raise AssertionError(f"unexpected status {a.status} for {a.key}")
    rows = await wait_all_final(db, set(accepted))
    # Counters = rows, nothing oversold, caps: on every SKU (tests/history.py, shared by all).
    await check_stored(db)
    assert not sold_out_fast & set(accepted), "a key was both accepted and fast-rejected"
    assert await db.fetchval("SELECT count(*) FROM purchases WHERE id = ANY($1)", list(sold_out_fast)) == 0
    # 1. Never oversell, in the counters and in the rows.
    sold = await db.fetchrow("SELECT stock, reserved, sold FROM skus WHERE sku = $1", sku)
    live = sum(r["qty"] for r in rows.values() if r["status"] in ("reserved", "confirmed"))
    assert sold["reserved"] + sold["sold"] <= sold["stock"] == stock
    total_live = await db.fetchval(
        "SELECT coalesce(sum(qty), 0) FROM purchases WHERE sku = $1"
        " AND status IN ('reserved', 'confirmed')", sku)
    assert total_live == sold["reserved"] + sold["sold"] == live
    # 2. One purchase id, one decision: one row per accepted id, none for anything else.
    assert await db.fetchval("SELECT count(*) FROM purchases WHERE sku = $1", sku) == len(accepted)
    # 4. Per-user caps.
    if max_per_user is not None:
        over = await db.fetchval(
            """SELECT count(*) FROM (SELECT user_id FROM purchases WHERE sku = $1
               AND status IN ('reserved', 'confirmed') GROUP BY user_id HAVING sum(qty) > $2) o""",
            sku, max_per_user)
        assert over == 0
    # Retries saw the same outcome as Postgres holds (those that waited for it).
    for pid, tries in accepted.items():
        for a in tries:
            if a.state in FINAL:
                assert a.state == rows[pid]["status"], (pid, a.state, rows[pid]["status"])
    confirmed = sum(r["status"] == "confirmed" for r in rows.values())
    summary = {"accepted": len(accepted), "sold_out_fast": len(sold_out_fast), "confirmed": confirmed,
               "statuses": result.by_status()}
    if result.hostile is not None:
        # Their purchases settled, one row each, and every shard still decides.
        summary["hostile"] = await result.hostile.check(db)
    return summary
