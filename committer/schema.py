"""The tables the committer writes (its only writer) and the one way to read their rows.

`schema.sql` is applied idempotently at every start, and writes the shard map on the first one
(flashsale/shardmap.py). Readers (ingest's read model, the gateway's
reconciliation) use the column lists and row conversions here, so a column is named once.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

import asyncpg

from flashsale import shardmap
from flashsale.db import DB_NOW_MS, SCHEMA_LOCK_KEY
from proto.messages import Decision, SkuState
from proto.sharding import SHARD_FUNCTION

# An asyncpg row, or any mapping with the same keys (asyncpg's Record is not typed as a Mapping).
Row = asyncpg.Record | Mapping[str, Any]

PURCHASE_COLUMNS = (
    "id, sku, user_id, qty, status, reason, amount_cents, accepted_at_ms, decided_at_ms, "
    "updated_at_ms, expires_at_ms, request_hash"
)
SKU_COLUMNS = (
    "sku, stock, reserved, sold, price_cents, max_per_user, payment, reservation_ttl_s, "
    "sale_start_ms, sale_end_ms"
)


def decision_of(row: Row) -> Decision:
    """A `purchases` row selected with PURCHASE_COLUMNS."""
    return Decision(
        id=row["id"], sku=row["sku"], user_id=row["user_id"], qty=row["qty"],
        status=row["status"], reason=row["reason"], amount_cents=row["amount_cents"],
        accepted_at_ms=row["accepted_at_ms"], decided_at_ms=row["decided_at_ms"],
        updated_at_ms=row["updated_at_ms"], expires_at_ms=row["expires_at_ms"],
        request_hash=row["request_hash"],
    )


def sku_state_of(row: Row) -> SkuState:
    """A `skus` row selected with SKU_COLUMNS."""
    return SkuState(
        sku=row["sku"], stock=row["stock"], reserved=row["reserved"], sold=row["sold"],
        price_cents=row["price_cents"], max_per_user=row["max_per_user"], payment=row["payment"],
        reservation_ttl_s=row["reservation_ttl_s"], sale_start_ms=row["sale_start_ms"],
        sale_end_ms=row["sale_end_ms"],
    )


def schema_sql() -> str:
    return resources.files("committer").joinpath("schema.sql").read_text()


async def apply_schema(database_url: str, shards: int) -> shardmap.ShardMap:
    """The tables, and the shard map: written from `shards` if the database has none yet, else
    checked against it (ShardMapError on a mismatch: only `flashsale reshard` changes it)."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY)
            await conn.execute(schema_sql())
            await conn.execute(
                f"""INSERT INTO shard_map (shards, function, changed_at_ms)
                    VALUES ($1, $2, {DB_NOW_MS}) ON CONFLICT (one) DO NOTHING""",
                shards, SHARD_FUNCTION,
            )
        return await shardmap.check(conn, shards)
    finally:
        await conn.close()
