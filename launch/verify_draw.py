"""`flashsale verify-draw SKU`: recompute a SKU's draw from ingest's public endpoints alone.

What it checks: the revealed seed matches the commitment published before the sale
(`sha256(seed)`); the ranks are 1..M with M the entries the SKU reports; and the order of the
entries is exactly `proto.draw.draw_order(seed, ids)`. With `--id`, that the buyer's purchase is
in the list, and at which rank. It cannot see an entry that was left out of the list: a buyer
checks their own id (docs/architecture.md, "Fair drops").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from urllib.parse import quote

import aiohttp

from proto.draw import draw_order, valid_seed

TIMEOUT_S = 10.0


@dataclass
class DrawReport:
    sku: str
    entries: int = 0
    seed: str | None = None
    commitment: str | None = None
    rank_of_id: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def verify_draw(base_url: str, sku: str, purchase_id: str | None = None,
                      page_size: int = 1000) -> DrawReport:
    report = DrawReport(sku)
    path = f"{base_url.rstrip('/')}/v1/skus/{quote(sku, safe='')}"
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.get(path) as r:
            if r.status != 200:
                report.problems.append(f"GET {path}: {r.status}")
                return report
            draw = (await r.json()).get("draw")
        if not draw:
            report.problems.append("the SKU has no draw")
            return report
        if draw["state"] != "drawn":
            report.problems.append(f"not drawn yet (state {draw['state']}, decided from "
                                   f"{draw['decides_at']})")
            return report
        report.seed, report.commitment = draw["seed"], draw["commitment"]
        ranked: list[tuple[int, str]] = []
        after = 0
        while True:
            async with http.get(f"{path}/draw", params={"after": str(after),
                                                         "limit": str(page_size)}) as r:
                if r.status != 200:
                    report.problems.append(f"GET {path}/draw: {r.status}")
                    return report
                page = await r.json()
            ranked += [(e["rank"], e["id"]) for e in page["entries"]]
            if page["next_after"] is None:
                break
            after = page["next_after"]
        report.entries = draw["entries"]
    report.problems += check(report.seed, report.commitment, report.entries, ranked)
    if purchase_id is not None:
        report.rank_of_id = next((rank for rank, pid in ranked if pid == purchase_id), None)
        if report.rank_of_id is None:
            report.problems.append(f"purchase {purchase_id} is not among the entries")
    return report


def check(seed: str | None, commitment: str | None, entries: int,
          ranked: list[tuple[int, str]]) -> list[str]:
    """Everything wrong with a published draw (pure)."""
    if seed is None or not valid_seed(seed):
        return [f"the revealed seed is not 64 hex digits: {seed!r}"]
    problems = []
    if hashlib.sha256(bytes.fromhex(seed)).hexdigest() != commitment:
        problems.append("sha256(seed) is not the commitment published before the sale")
    ranks = [rank for rank, _ in ranked]
    if ranks != list(range(1, len(ranked) + 1)):
        problems.append("the ranks are not 1..M in order")
    if len(ranked) != entries:
        problems.append(f"{len(ranked)} entries listed, the SKU says {entries}")
    ids = [pid for _, pid in ranked]
    if draw_order(seed, ids) != ids:
        problems.append("the order is not HMAC-SHA256(seed, purchase id)")
    return problems
