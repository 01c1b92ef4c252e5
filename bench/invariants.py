"""What Postgres says about a system after its load: the invariants (all must be 0) and the
decisions with their latencies, from the database's own timestamps."""

from __future__ import annotations

import asyncpg
import msgspec

FINAL_OR_RESERVED = ["reserved", "confirmed", "rejected", "expired", "cancelled"]


class Invariants(msgspec.Struct):
    """All must be 0. See docs/benchmarks.md for exactly what each one counts."""

    oversold_skus: int = 0  # SKUs whose committed counters or orders exceed their stock
    duplicate_orders: int = 0  # extra rows for one buyer (each buyer makes one logical purchase)
    lost: int = 0  # ids answered 2xx with no final (or reserved) row after the drain
    id_mismatch: int = 0  # one (user, key) answered with two different ids (retry storm)
    accepted_ids: int = 0  # distinct ids answered 2xx (what `lost` was checked against)
    rows: int = 0  # order rows in the database
    sold: int = 0  # units confirmed or reserved
    stock: int = 0  # units offered


async def check_invariants(conn: asyncpg.Connection, accepted_ids: set[str], stock: int, skus: str,
                 orders: str, oversold_cond: str, sold_expr: str, repeat_skus: list[str]) -> Invariants:
    inv = Invariants(accepted_ids=len(accepted_ids), stock=stock)
    counters = await conn.fetchval(f"SELECT count(*) FROM {skus} s WHERE {oversold_cond}")
    by_orders = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT o.sku FROM {orders} o JOIN {skus} s USING (sku)"
        " WHERE o.status IN ('confirmed', 'reserved') GROUP BY o.sku, s.stock"
        " HAVING sum(o.qty) > s.stock) x"
    )
    inv.oversold_skus = counters + by_orders
    # Every logical purchase the bench makes has its own buyer: two rows for one buyer means one
    # click became two orders. Except on the SKUs of repeated-buyer phases, where buyers buy many
    # times on purpose (their ids still come from (buyer, key), so a retry cannot add a row).
    inv.duplicate_orders = await conn.fetchval(
        f"SELECT coalesce(sum(n - 1), 0)::bigint FROM (SELECT count(*) n FROM {orders}"
        " WHERE sku <> ALL($1::text[]) GROUP BY user_id HAVING count(*) > 1) x", repeat_skus
    )
    inv.lost = await conn.fetchval(
        f"SELECT count(*) FROM unnest($1::text[]) a(id) LEFT JOIN {orders} o USING (id)"
        " WHERE o.id IS NULL OR o.status <> ALL($2::text[])",
        list(accepted_ids), FINAL_OR_RESERVED,
    )
    inv.rows = await conn.fetchval(f"SELECT count(*) FROM {orders}")
    inv.sold = await conn.fetchval(f"SELECT coalesce(sum({sold_expr}), 0)::bigint FROM {skus} s")
    return inv


async def db_decisions(url: str, orders: str, start_ms: int,
                       end_ms: int) -> tuple[int, list[float], list[int]]:
    conn = await asyncpg.connect(url)
    try:
        decided = await conn.fetchval(
            f"SELECT count(*) FROM {orders} WHERE decided_at_ms >= $1 AND decided_at_ms < $2",
            start_ms, end_ms)
        lat = await conn.fetch(
            f"SELECT decided_at_ms - accepted_at_ms AS d FROM {orders}"
            " WHERE accepted_at_ms >= $1 AND accepted_at_ms < $2", start_ms, end_ms)
        secs = await conn.fetch(
            f"SELECT (decided_at_ms - $1) / 1000 AS s, count(*) AS n FROM {orders}"
            " WHERE decided_at_ms >= $1 AND decided_at_ms < $2 GROUP BY 1 ORDER BY 1", start_ms, end_ms)
        per_s = [0] * max(1, (end_ms - start_ms + 999) // 1000)
        for r in secs:
            if 0 <= r["s"] < len(per_s):
                per_s[r["s"]] += r["n"]
        return decided, [float(r["d"]) for r in lat], per_s
    finally:
        await conn.close()
