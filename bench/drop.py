"""The `drop` scenario: who gets a drop's stock at the second it opens, first come first served
and with a draw (docs/architecture.md, "Fair drops").

flashsale only. `buyers` buyers click within `window_s` seconds of the sale's start for `stock`
units (one per buyer). A share of them (`bot_share`) are bots: each sends `bot_keys` purchases
(distinct keys) over ten times the connections per buyer that people have, and starts clicking
`head_start_ms` before people can. The same crowd buys two SKUs, one after the other: one first
come first served, one whose first `window_s` seconds are a draw. The report gives each group's
share of the stock in both; with the draw it should be the group's share of buyers, within the
noise of drawing `stock` winners (shown as two standard deviations).

The load comes from this process (aiohttp, a connection pool per group): when it cannot send a
click on time, the report says how late the clicks went out.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from dataclasses import dataclass

import aiohttp
import asyncpg
import msgspec

from bench.buyers import TOKEN_TTL_S, bench_settings
from ingest.auth import dev_tokens
from ingest.schemas import iso_ms

DROP_BUYERS = 20_000
DROP_STOCK = 1_000
QUICK_BUYERS = 2_000
QUICK_STOCK = 100
WINDOW_S = 2
BOT_SHARE = 0.1
BOT_KEYS = 10  # purchases per bot, each with its own key, over its ten times the connections
CONNECTIONS_X = 10
HEAD_START_MS = 200
PEOPLE_CONNECTIONS = 200  # the people's pool; the bots' is sized to ten times per buyer
LEAD_S = 3.0  # from creating a SKU to its sale_start
DECIDE_TIMEOUT_S = 120.0
GROUPS = ("bots", "people")


@dataclass(frozen=True)
class Click:
    user: str
    key: str
    at_ms: int  # after sale_start


def group_of(user: str) -> str:
    return user.partition("-")[0]


def plan_clicks(buyers: int, bot_share: float, bot_keys: int, window_s: int, head_start_ms: int,
                seed: int = 20) -> list[Click]:
    """Every click of the crowd, by time: people uniformly in [head_start, window), bots
    uniformly in [0, window - head_start), `bot_keys` each. Pure."""
    rng = random.Random(seed)
    bots = round(buyers * bot_share)
    window_ms = window_s * 1000
    clicks = []
    for i in range(buyers):
        if i < bots:
            user = f"bots-{i}"
            clicks += [Click(user, f"{user}-k{k}", rng.randrange(0, window_ms - head_start_ms))
                       for k in range(bot_keys)]
        else:
            user = f"people-{i}"
            clicks.append(Click(user, f"{user}-k0", rng.randrange(head_start_ms, window_ms)))
    return sorted(clicks, key=lambda c: c.at_ms)


class GroupShare(msgspec.Struct, kw_only=True):
    group: str
    buyers: int
    buyer_share: float
    fcfs_units: int
    fcfs_share: float
    draw_units: int
    draw_share: float


class DropFigures(msgspec.Struct, kw_only=True):
    buyers: int
    stock: int
    window_s: int
    bot_keys: int
    connections: dict[str, int]  # group -> connections of its pool
    head_start_ms: int
    groups: list[GroupShare] = []
    noise_2sigma: float = 0.0  # of a group's share with the draw, for the bots' buyer share
    answers: dict[str, dict[str, int]] = {}  # variant -> HTTP status -> count
    late_ms_p99: dict[str, float] = {}  # variant -> how late the generator sent its clicks


def shares(units: dict[str, Counter[str]], buyers_by_group: dict[str, int]) -> list[GroupShare]:
    """units: variant ("fcfs", "draw") -> group -> units bought. Pure."""
    total = sum(buyers_by_group.values())
    out = []
    for g, n in buyers_by_group.items():
        fcfs, draw = units["fcfs"][g], units["draw"][g]
        out.append(GroupShare(
            group=g, buyers=n, buyer_share=n / total,
            fcfs_units=fcfs, fcfs_share=fcfs / max(1, sum(units["fcfs"].values())),
            draw_units=draw, draw_share=draw / max(1, sum(units["draw"].values())),
        ))
    return out


def noise_2sigma(share: float, stock: int, buyers: int) -> float:
    """Two standard deviations of a group's share of `stock` winners drawn without replacement
    from `buyers`, the group being `share` of them (hypergeometric)."""
    if stock <= 0 or buyers <= 1:
        return 0.0
    n = min(stock, buyers)
    return 2 * math.sqrt(share * (1 - share) / n * (buyers - n) / (buyers - 1))


async def run_drop(base_url: str, admin_token: str, database_url: str, buyers: int, stock: int,
                   ) -> tuple[DropFigures, set[str], list[str]]:
    """Both variants against a running flashsale: the figures, every accepted purchase id and
    the SKUs (each buyer buys on both, the bots with many keys: the invariants' repeat SKUs)."""
    clicks = plan_clicks(buyers, BOT_SHARE, BOT_KEYS, WINDOW_S, HEAD_START_MS)
    users = sorted({c.user for c in clicks})
    tokens = dict(zip(users, dev_tokens(bench_settings(), users, TOKEN_TTL_S), strict=True))
    by_group = Counter(group_of(u) for u in users)
    bot_pool = max(1, round(PEOPLE_CONNECTIONS * CONNECTIONS_X * by_group["bots"]
                            / max(1, by_group["people"])))
    f = DropFigures(buyers=buyers, stock=stock, window_s=WINDOW_S, bot_keys=BOT_KEYS,
                    connections={"bots": bot_pool, "people": PEOPLE_CONNECTIONS},
                    head_start_ms=HEAD_START_MS)
    units: dict[str, Counter[str]] = {}
    accepted: set[str] = set()
    skus: list[str] = []
    conn = await asyncpg.connect(database_url)
    try:
        for variant, window_s in (("fcfs", 0), ("draw", WINDOW_S)):
            sku = f"drop-{variant}-{int(time.time())}"
            skus.append(sku)
            start_ms = await _create(base_url, admin_token, sku, stock, window_s)
            answers, ids, late = await _send(base_url, sku, clicks, tokens, start_ms, f.connections)
            f.answers[variant] = dict(answers)
            f.late_ms_p99[variant] = late
            accepted |= ids
            await _wait_decided(conn, sku, ids)
            rows = await conn.fetch(
                "SELECT user_id, sum(qty)::int AS n FROM purchases WHERE sku = $1 "
                "AND status = 'confirmed' GROUP BY user_id", sku)
            units[variant] = Counter()
            for r in rows:
                units[variant][group_of(r["user_id"])] += r["n"]
    finally:
        await conn.close()
    f.groups = shares(units, {g: by_group[g] for g in GROUPS})
    f.noise_2sigma = noise_2sigma(by_group["bots"] / buyers, stock, buyers)
    return f, accepted, skus


async def _create(base_url: str, admin_token: str, sku: str, stock: int, window_s: int) -> int:
    start_ms = int(time.time() * 1000 + LEAD_S * 1000)
    body = {"stock": stock, "max_per_user": 1, "payment": "none", "sale_start": iso_ms(start_ms),
            "draw_window_s": window_s}
    async with aiohttp.ClientSession() as http, http.put(
        f"{base_url}/v1/admin/skus/{sku}", json=body,
        headers={"Authorization": f"Bearer {admin_token}"},
    ) as r:
        if r.status != 200:
            raise RuntimeError(f"creating {sku}: {r.status} {await r.text()}")
    return start_ms


async def _send(base_url: str, sku: str, clicks: list[Click], tokens: dict[str, str],
                start_ms: int, pools: dict[str, int]) -> tuple[Counter[str], set[str], float]:
    """Every click at its time (as far as this process keeps up), through its group's pool."""
    sessions = {g: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n))
                for g, n in pools.items()}
    answers: Counter[str] = Counter()
    ids: set[str] = set()
    late_ms: list[float] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time() + (start_ms - time.time() * 1000) / 1000  # sale_start on the loop's clock

    async def click(c: Click) -> None:
        await asyncio.sleep(max(0.0, t0 + c.at_ms / 1000 - loop.time()))
        late_ms.append(max(0.0, (loop.time() - t0) * 1000 - c.at_ms))
        try:
            async with sessions[group_of(c.user)].post(
                f"{base_url}/v1/purchases", json={"sku": sku, "qty": 1},
                # A key per SKU: the same key with another body is refused (422), not a purchase.
                headers={"Authorization": f"Bearer {tokens[c.user]}",
                         "Idempotency-Key": f"{sku}-{c.key}"},
            ) as r:
                answers[str(r.status)] += 1
                if r.status in (200, 202):
                    ids.add((await r.json())["id"])
        except (aiohttp.ClientError, TimeoutError) as e:
            answers[type(e).__name__] += 1

    try:
        await asyncio.gather(*(click(c) for c in clicks))
    finally:
        for s in sessions.values():
            await s.close()
    late_ms.sort()
    return answers, ids, late_ms[int(len(late_ms) * 0.99)] if late_ms else 0.0


async def _wait_decided(conn: asyncpg.Connection, sku: str, ids: set[str]) -> None:
    deadline = time.monotonic() + DECIDE_TIMEOUT_S
    while time.monotonic() < deadline:
        n = await conn.fetchval("SELECT count(*) FROM purchases WHERE sku = $1", sku)
        if n >= len(ids):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{sku}: not every accepted purchase decided in {DECIDE_TIMEOUT_S:g}s")
