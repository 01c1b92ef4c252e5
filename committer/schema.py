"""The tables the committer writes (its only writer) and the one way to read their rows.

`schema.sql` is idempotent and `apply_schema` runs at every start (and in `flashsale schema`),
beside running services; it writes the shard map on the first one (flashsale/shardmap.py).
Readers (ingest's read model, the gateway's reconciliation) use the column lists and row
conversions here, so a column is named once.

Online-safe: an unchanged schema (same digest as the one applied last) is not executed again, so
an ordinary start takes no table lock at all. A changed one locks every table first, in the order
a committer's batch does (no lock cycle with a writer, hence no deadlock), under a lock_timeout
below Postgres's deadlock_timeout: if anything holds a table longer, the schema change gives way
(rolls back and retries after a pause), never the writer.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from importlib import resources
from typing import Any

import asyncpg

from flashsale import shardmap
from flashsale.db import DB_NOW_MS, SCHEMA_LOCK_KEY, quote_ident
from proto.draw import commitment_of
from proto.messages import Decision, SkuState
from proto.sharding import SHARD_FUNCTION

# An asyncpg row, or any mapping with the same keys (asyncpg's Record is not typed as a Mapping).
Row = asyncpg.Record | Mapping[str, Any]

PURCHASE_COLUMNS = (
    "id, sku, user_id, qty, status, reason, amount_cents, accepted_at_ms, decided_at_ms, "
    "updated_at_ms, expires_at_ms, request_hash, draw_rank"
)
# The primary key of `purchases` (schema.sql, Postgres's default name): one row per purchase id.
PURCHASES_KEY = "purchases_pkey"
SKU_COLUMNS = (
    "sku, stock, reserved, sold, price_cents, max_per_user, payment, reservation_ttl_s, "
    "sale_start_ms, sale_end_ms, draw_window_s, draw_seed, drawn_at_ms, draw_entries"
)


def decision_of(row: Row) -> Decision:
    """A `purchases` row selected with PURCHASE_COLUMNS."""
    return Decision(
        id=row["id"], sku=row["sku"], user_id=row["user_id"], qty=row["qty"],
        status=row["status"], reason=row["reason"], amount_cents=row["amount_cents"],
        accepted_at_ms=row["accepted_at_ms"], decided_at_ms=row["decided_at_ms"],
        updated_at_ms=row["updated_at_ms"], expires_at_ms=row["expires_at_ms"],
        request_hash=row["request_hash"], draw_rank=row["draw_rank"],
    )


def sku_state_of(row: Row) -> SkuState:
    """A `skus` row selected with SKU_COLUMNS. The draw's seed is kept secret until drawn."""
    seed, drawn_at_ms = row["draw_seed"], row["drawn_at_ms"]
    return SkuState(
        sku=row["sku"], stock=row["stock"], reserved=row["reserved"], sold=row["sold"],
        price_cents=row["price_cents"], max_per_user=row["max_per_user"], payment=row["payment"],
        reservation_ttl_s=row["reservation_ttl_s"], sale_start_ms=row["sale_start_ms"],
        sale_end_ms=row["sale_end_ms"], draw_window_s=row["draw_window_s"],
        draw_commitment=commitment_of(seed) if seed else None,
        draw_seed=seed if drawn_at_ms is not None else None, drawn_at_ms=drawn_at_ms,
        draw_entries=row["draw_entries"],
    )


# Every table of schema.sql, in the order a committer's batch transaction locks them (lease, SKUs,
# purchases, draw entries); a schema change takes them all in this order before it changes any.
TABLES = ("shard_leases", "skus", "purchases", "draw_entries", "shard_map", "schema_applied")
# What the services' role may do: committers write the first (and delete decided draw entries),
# everyone reads the rest. It owns nothing, so it can neither change the schema nor the shard map
# (`flashsale reshard` can).
SERVICE_WRITES = ("shard_leases", "skus", "purchases", "draw_entries")
SERVICE_DELETES = ("draw_entries",)
SERVICE_READS = ("shard_map", "schema_applied")
# Below Postgres's deadlock_timeout (1 s): a writer queued behind a schema change never waits long
# enough for a deadlock check, and the schema change, not the writer, is the one that gives way.
LOCK_TIMEOUT = "500ms"
ATTEMPTS_MAX = 60  # about a minute of retries (pauses of 0.05 s doubling up to 1 s)


class SchemaBusy(RuntimeError):
    """The tables stayed locked through every attempt (a long transaction holds one)."""


def schema_sql() -> str:
    return resources.files("committer").joinpath("schema.sql").read_text()


async def apply_schema(
    database_url: str, shards: int, service_role: str | None = None
) -> shardmap.ShardMap:
    """The tables (as the role of `database_url`, which then owns them), their grants to
    `service_role` if given, and the shard map: written from `shards` if the database has none
    yet, else checked against it (ShardMapError on a mismatch: only `flashsale reshard` changes
    it). Safe beside running services (module docstring); SchemaBusy if it never got the locks."""
    sql = schema_sql()
    if service_role:
        role = quote_ident(service_role)
        sql += (f"\nGRANT SELECT, INSERT, UPDATE ON {', '.join(SERVICE_WRITES)} TO {role};"
                f"\nGRANT DELETE ON {', '.join(SERVICE_DELETES)} TO {role};"
                f"\nGRANT SELECT ON {', '.join(SERVICE_READS)} TO {role};\n")
    digest = hashlib.sha256(sql.encode()).hexdigest()
    conn = await asyncpg.connect(database_url)
    try:
        pause_s = 0.05
        for attempt in range(1, ATTEMPTS_MAX + 1):
            try:
                async with conn.transaction():
                    await _apply(conn, sql, digest, shards)
                break
            except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as e:
                if attempt == ATTEMPTS_MAX:
                    raise SchemaBusy(f"schema not applied: tables still locked after "
                                     f"{attempt} attempts ({e})") from e
                await asyncio.sleep(pause_s)
                pause_s = min(1.0, pause_s * 2)
        return await shardmap.check(conn, shards)
    finally:
        await conn.close()


async def _apply(conn: asyncpg.Connection, sql: str, digest: str, shards: int) -> None:
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    # Two starters at once: the second waits (or retries) and then finds the digest applied.
    await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY)
    applied = None
    if await conn.fetchval("SELECT to_regclass('schema_applied')") is not None:
        applied = await conn.fetchval("SELECT digest FROM schema_applied")
    if applied != digest:
        existing = [t for t in TABLES if await conn.fetchval("SELECT to_regclass($1)", t) is not None]
        if existing:
            await conn.execute(f"LOCK TABLE {', '.join(existing)} IN ACCESS EXCLUSIVE MODE")
        await conn.execute(sql)
        await conn.execute(
            f"""INSERT INTO schema_applied (digest, applied_at_ms) VALUES ($1, {DB_NOW_MS})
                ON CONFLICT (one) DO UPDATE SET digest = EXCLUDED.digest,
                                                applied_at_ms = EXCLUDED.applied_at_ms""",
            digest,
        )
    await conn.execute(
        f"""INSERT INTO shard_map (shards, function, changed_at_ms)
            VALUES ($1, $2, {DB_NOW_MS}) ON CONFLICT (one) DO NOTHING""",
        shards, SHARD_FUNCTION,
    )
