"""Postgres side of the committer: the shard lease, rebuilding the machine, committing a Step.

Every Step is written in one transaction that first proves this process still holds the shard's
lease epoch (invariant 5): a zombie committer's batch fails as a whole.
"""

from __future__ import annotations

import asyncpg

from committer.machine import Machine, Sku, Step
from proto.messages import Decision
from proto.sharding import shard_of


class Fenced(RuntimeError):
    """Another committer took this shard's lease; this process must stop writing."""


class CorruptWrite(RuntimeError):
    """Postgres disagrees with the machine (a row exists that it thought new). Never commit."""


_DECISION_COLUMNS = (
    "id, sku, user_id, qty, status, reason, amount_cents, accepted_at_ms, decided_at_ms, "
    "updated_at_ms, expires_at_ms, request_hash"
)


def _decision(row: asyncpg.Record) -> Decision:
    return Decision(
        id=row["id"], sku=row["sku"], user_id=row["user_id"], qty=row["qty"],
        status=row["status"], reason=row["reason"], amount_cents=row["amount_cents"],
        accepted_at_ms=row["accepted_at_ms"], decided_at_ms=row["decided_at_ms"],
        updated_at_ms=row["updated_at_ms"], expires_at_ms=row["expires_at_ms"],
        request_hash=row["request_hash"],
    )


async def acquire_lease(conn: asyncpg.Connection, shard: int, owner: str, now_ms: int) -> int:
    """Take the shard by bumping its epoch. Any older holder is fenced from its next batch on."""
    return await conn.fetchval(
        """
        INSERT INTO shard_leases (shard, epoch, owner, acquired_at_ms, renewed_at_ms)
        VALUES ($1, 1, $2, $3, $3)
        ON CONFLICT (shard) DO UPDATE
            SET epoch = shard_leases.epoch + 1, owner = EXCLUDED.owner,
                acquired_at_ms = EXCLUDED.acquired_at_ms, renewed_at_ms = EXCLUDED.renewed_at_ms
        RETURNING epoch
        """,
        shard, owner, now_ms,
    )


async def lease_epoch(conn: asyncpg.Connection, shard: int) -> int | None:
    return await conn.fetchval("SELECT epoch FROM shard_leases WHERE shard = $1", shard)


async def load_machine(
    conn: asyncpg.Connection, shard: int, shards: int, seen_max: int
) -> Machine:
    """Rebuild the shard's state from what is committed: the only truth after a crash."""
    machine = Machine(shard, seen_max=seen_max)
    for row in await conn.fetch("SELECT * FROM skus"):
        if shard_of(row["sku"], shards) != shard:
            continue
        machine.load_sku(
            Sku(
                sku=row["sku"], stock=row["stock"], price_cents=row["price_cents"],
                max_per_user=row["max_per_user"], payment=row["payment"],
                reservation_ttl_s=row["reservation_ttl_s"], sale_start_ms=row["sale_start_ms"],
                sale_end_ms=row["sale_end_ms"], reserved=row["reserved"], sold=row["sold"],
            )
        )
    skus = list(machine.skus)
    # Caps count every live purchase, including ones too old to keep in memory.
    for row in await conn.fetch(
        """SELECT sku, user_id, sum(qty)::int AS qty FROM purchases
           WHERE sku = ANY($1) AND status IN ('reserved', 'confirmed') GROUP BY sku, user_id""",
        skus,
    ):
        machine.user_qty[(row["sku"], row["user_id"])] = row["qty"]
    # Reserved purchases always (they hold stock), then the most recent decisions up to the cap.
    rows = await conn.fetch(
        f"""(SELECT {_DECISION_COLUMNS} FROM purchases WHERE sku = ANY($1) AND status = 'reserved')
            UNION ALL
            (SELECT {_DECISION_COLUMNS} FROM purchases WHERE sku = ANY($1) AND status <> 'reserved'
             ORDER BY decided_at_ms DESC LIMIT $2)""",
        skus, seen_max,
    )
    for row in sorted(rows, key=lambda r: r["decided_at_ms"]):
        machine.load_decision(_decision(row))
    total = await conn.fetchval("SELECT count(*) FROM purchases WHERE sku = ANY($1)", skus)
    machine.forgot_any = total > len(machine.decisions)
    _check_counters(machine)
    return machine


def _check_counters(machine: Machine) -> None:
    """The SKU counters and the reserved purchases loaded must agree, or refuse to start."""
    held: dict[str, int] = {}
    for d in machine.reserved.values():
        held[d.sku] = held.get(d.sku, 0) + d.qty
    for sku in machine.skus.values():
        if held.get(sku.sku, 0) != sku.reserved:
            raise CorruptWrite(
                f"{sku.sku}: counter says {sku.reserved} reserved, purchases say {held.get(sku.sku, 0)}"
            )


async def lookup(conn: asyncpg.Connection, ids: list[str]) -> list[Decision]:
    rows = await conn.fetch(f"SELECT {_DECISION_COLUMNS} FROM purchases WHERE id = ANY($1)", ids)
    return [_decision(r) for r in rows]


async def commit(
    conn: asyncpg.Connection, shard: int, epoch: int, step: Step, now_ms: int
) -> None:
    async with conn.transaction():
        status = await conn.execute(
            "UPDATE shard_leases SET renewed_at_ms = $3 WHERE shard = $1 AND epoch = $2",
            shard, epoch, now_ms,
        )
        if status != "UPDATE 1":
            raise Fenced(f"shard {shard}: epoch {epoch} is no longer the lease holder")
        if step.skus:
            await _write_skus(conn, list(step.skus.values()), now_ms)
        if step.inserts:
            await _insert_purchases(conn, step.inserts)
        if step.updates:
            await _update_purchases(conn, list(step.updates.values()), step.psp_refs)


async def _write_skus(conn: asyncpg.Connection, skus: list[Sku], now_ms: int) -> None:
    await conn.execute(
        """
        INSERT INTO skus (sku, stock, reserved, sold, price_cents, max_per_user, payment,
                          reservation_ttl_s, sale_start_ms, sale_end_ms, updated_at_ms)
        SELECT u.*, $11::bigint FROM unnest($1::text[], $2::int[], $3::int[], $4::int[],
            $5::bigint[], $6::int[], $7::text[], $8::int[], $9::bigint[], $10::bigint[]) AS u
        ON CONFLICT (sku) DO UPDATE SET
            stock = EXCLUDED.stock, reserved = EXCLUDED.reserved, sold = EXCLUDED.sold,
            price_cents = EXCLUDED.price_cents, max_per_user = EXCLUDED.max_per_user,
            payment = EXCLUDED.payment, reservation_ttl_s = EXCLUDED.reservation_ttl_s,
            sale_start_ms = EXCLUDED.sale_start_ms, sale_end_ms = EXCLUDED.sale_end_ms,
            updated_at_ms = EXCLUDED.updated_at_ms
        """,
        [s.sku for s in skus], [s.stock for s in skus], [s.reserved for s in skus],
        [s.sold for s in skus], [s.price_cents for s in skus], [s.max_per_user for s in skus],
        [s.payment for s in skus], [s.reservation_ttl_s for s in skus],
        [s.sale_start_ms for s in skus], [s.sale_end_ms for s in skus], now_ms,
    )


async def _insert_purchases(conn: asyncpg.Connection, rows: list[Decision]) -> None:
    inserted = await conn.fetchval(
        """
        WITH ins AS (
            INSERT INTO purchases (id, sku, user_id, qty, status, reason, amount_cents,
                                   accepted_at_ms, decided_at_ms, updated_at_ms, expires_at_ms,
                                   request_hash)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[],
                $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[],
                $11::bigint[], $12::text[])
            ON CONFLICT (id) DO NOTHING
            RETURNING 1
        ) SELECT count(*) FROM ins
        """,
        [d.id for d in rows], [d.sku for d in rows], [d.user_id for d in rows],
        [d.qty for d in rows], [d.status for d in rows], [d.reason for d in rows],
        [d.amount_cents for d in rows], [d.accepted_at_ms for d in rows],
        [d.decided_at_ms for d in rows], [d.updated_at_ms for d in rows],
        [d.expires_at_ms for d in rows], [d.request_hash for d in rows],
    )
    if inserted != len(rows):
        # The machine decided an id Postgres already has: a second decision. Abort the batch.
        raise CorruptWrite(f"{len(rows) - inserted} purchase ids already decided in Postgres")


async def _update_purchases(
    conn: asyncpg.Connection, rows: list[Decision], psp_refs: dict[str, str]
) -> None:
    updated = await conn.fetchval(
        """
        WITH upd AS (
            UPDATE purchases p SET status = u.status, reason = u.reason,
                updated_at_ms = u.updated_at_ms, psp_ref = COALESCE(u.psp_ref, p.psp_ref)
            FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])
                AS u(id, status, reason, updated_at_ms, psp_ref)
            WHERE p.id = u.id AND p.status = 'reserved'
            RETURNING 1
        ) SELECT count(*) FROM upd
        """,
        [d.id for d in rows], [d.status for d in rows], [d.reason for d in rows],
        [d.updated_at_ms for d in rows], [psp_refs.get(d.id) for d in rows],
    )
    if updated != len(rows):
        raise CorruptWrite(f"{len(rows) - updated} purchases were not reserved in Postgres")
