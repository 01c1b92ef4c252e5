"""The normal buyer of the edge tests: buys one at a time from its own address while an attack
runs, and reports its latency. Figures are printed, never asserted on (a shared machine's timing
is not a test's business); every purchase must still be confirmed."""

from __future__ import annotations

import statistics
import time

import aiohttp

from tests.integration.test_edge_limits import BUYER, session
from tests.integration.test_ingest_flow import Client


class Latency:
    """Purchase-to-confirmation times of the buyer, in ms, with their outcomes."""

    def __init__(self) -> None:
        self.ms: list[float] = []
        self.outcomes: list[tuple[int, str]] = []

    @property
    def median_ms(self) -> float:
        return statistics.median(self.ms) if self.ms else float("nan")

    @property
    def p90_ms(self) -> float:
        ordered = sorted(self.ms)
        return ordered[int(len(ordered) * 0.9)] if ordered else float("nan")

    @property
    def all_confirmed(self) -> bool:
        return bool(self.outcomes) and all(o == (200, "confirmed") for o in self.outcomes)

    def line(self, label: str) -> str:
        return (f"{label}: {len(self.ms)} purchases, median {self.median_ms:.1f} ms, "
                f"p90 {self.p90_ms:.1f} ms, confirmed {sum(o == (200, 'confirmed') for o in self.outcomes)}")


async def buy_as_buyer(base: str, admin_token: str, sku: str, n: int, tag: str,
                       address: str = BUYER, new_connections: bool = False) -> Latency:
    """`n` purchases of `sku` by distinct buyers from `address`, one after another, each
    waiting for its decision (Prefer: wait), on one kept-alive connection like an app (or a
    new connection each: `new_connections`)."""
    out = Latency()
    async with session(address, force_close=new_connections) as http:
        buyer = Client(http, base, admin_token)
        for i in range(n):
            t0 = time.perf_counter()
            try:
                status, _, p = await buyer.buy(sku, f"{tag}-{i}", "k1", wait_s=10)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, p = 0, {"type": type(exc).__name__}
            out.ms.append((time.perf_counter() - t0) * 1000)
            out.outcomes.append((status, str(p.get("status", p.get("type", "")))))
    return out


def report(resource: str, baseline: Latency, **under: Latency) -> str:
    """One line per attack: the buyer's median under it and its ratio to the baseline."""
    lines = [f"[{resource}] " + baseline.line("no attack")]
    for label, lat in under.items():
        ratio = lat.median_ms / baseline.median_ms if baseline.median_ms else float("nan")
        lines.append(f"[{resource}] " + lat.line(label) + f", {ratio:.2f}x the median without")
    text = "\n".join(lines)
    print("\n" + text)
    return text
