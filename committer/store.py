"""Postgres side of the committer: the shard lease, rebuilding the machine, committing a Step.

Every Step is written in one transaction that first proves this process still holds the shard's
lease epoch (invariant 5): a zombie committer's batch fails as a whole.
"""

from __future__ import annotations

import asyncpg
import msgspec

from committer.draw import Entry
from committer.machine import Machine
from committer.schema import PURCHASE_COLUMNS, PURCHASES_KEY, decision_of
from committer.step import Sku, Step
from flashsale.db import DB_NOW_MS
from proto.messages import Decision, Purchase


class Fenced(RuntimeError):
    """Another committer took this shard's lease; this process must stop writing."""


class CorruptWrite(RuntimeError):
    """Postgres disagrees with the machine in a way no request can cause (a counter that is not
    the sum of its rows, a reservation that is not reserved in Postgres). Never commit."""


class DecidedElsewhere(Exception):
    """Purchase ids of the batch that Postgres already holds, decided or waiting in a draw: taken
    by another shard's writer (one Idempotency-Key used with SKUs of two shards). Nothing of the
    batch was written; the caller undoes the step and decides the batch again knowing them."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"{len(ids)} purchase ids already decided in Postgres")
        self.ids = ids


# Lease times are the database's clock (a lease check may have waited for a row lock meanwhile).
_DB_NOW_MS = DB_NOW_MS


class Lease(msgspec.Struct, frozen=True):
    """A shard's lease row as some committer last wrote it."""

    epoch: int
    owner: str
    expires_at_ms: int  # database clock


async def acquire_lease(
    conn: asyncpg.Connection, shard: int, owner: str, ttl_ms: int
) -> tuple[int | None, Lease]:
    """Take the shard (bump the epoch) if its lease has expired: (our epoch, the expired lease),
    or (None, the live lease someone else holds). Any older holder is fenced from its next batch on.
    A holder stalled inside a transaction keeps the row locked; lock_timeout then says "held"."""
    try:
        async with conn.transaction():
            # Epoch 0: a shard nobody has held yet, expired from the start.
            await conn.execute(
                """INSERT INTO shard_leases (shard, epoch, owner, acquired_at_ms, renewed_at_ms)
                   VALUES ($1, 0, '', 0, 0) ON CONFLICT (shard) DO NOTHING""",
                shard,
            )
            taken = await conn.fetchrow(
                f"""UPDATE shard_leases l SET epoch = l.epoch + 1, owner = $2,
                       acquired_at_ms = {_DB_NOW_MS}, renewed_at_ms = {_DB_NOW_MS},
                       expires_at_ms = {_DB_NOW_MS} + $3
                    FROM shard_leases previous
                    WHERE l.shard = $1 AND previous.shard = $1 AND l.expires_at_ms <= {_DB_NOW_MS}
                    RETURNING l.epoch AS taken, previous.epoch, previous.owner,
                              previous.expires_at_ms""",
                shard, owner, ttl_ms,
            )
            if taken is not None:
                # `previous` is for the log only: under a concurrent change it may be older.
                return int(taken["taken"]), _lease_of(taken)
    except asyncpg.LockNotAvailableError:
        pass
    held = await conn.fetchrow(
        "SELECT epoch, owner, expires_at_ms FROM shard_leases WHERE shard = $1", shard
    )
    assert held is not None  # inserted above, never deleted
    return None, _lease_of(held)


def _lease_of(row: asyncpg.Record) -> Lease:
    return Lease(epoch=row["epoch"], owner=row["owner"], expires_at_ms=row["expires_at_ms"])


async def renew_lease(conn: asyncpg.Connection, shard: int, epoch: int, ttl_ms: int) -> None:
    """Prove this process still holds `epoch` and extend the lease; else raise Fenced.

    Run inside every batch's transaction and on its own while idle. Only the epoch decides: a
    holder whose lease expired without anyone taking the shard may carry on."""
    status = await conn.execute(
        f"""UPDATE shard_leases SET renewed_at_ms = {_DB_NOW_MS}, expires_at_ms = {_DB_NOW_MS} + $3
            WHERE shard = $1 AND epoch = $2""",
        shard, epoch, ttl_ms,
    )
    if status != "UPDATE 1":
        raise Fenced(f"shard {shard}: epoch {epoch} is no longer the lease holder")


async def release_lease(conn: asyncpg.Connection, shard: int, epoch: int) -> None:
    """A clean stop: let a standby take the shard at once instead of after the TTL."""
    await conn.execute(
        "UPDATE shard_leases SET expires_at_ms = 0 WHERE shard = $1 AND epoch = $2", shard, epoch
    )


async def lease_epoch(conn: asyncpg.Connection, shard: int) -> int | None:
    epoch: int | None = await conn.fetchval("SELECT epoch FROM shard_leases WHERE shard = $1", shard)
    return epoch


async def load_machine(
    conn: asyncpg.Connection, shard: int, shards: int, seen_max: int
) -> Machine:
    """Rebuild the shard's state from what is committed: the only truth after a crash."""
    machine = Machine(shard, shards, seen_max=seen_max)
    for row in await conn.fetch("SELECT * FROM skus"):
        if not machine.owns(row["sku"]):
            continue
        machine.load_sku(
            Sku(
                sku=row["sku"], stock=row["stock"], price_cents=row["price_cents"],
                max_per_user=row["max_per_user"], payment=row["payment"],
                reservation_ttl_s=row["reservation_ttl_s"], sale_start_ms=row["sale_start_ms"],
                sale_end_ms=row["sale_end_ms"], reserved=row["reserved"], sold=row["sold"],
                draw_window_s=row["draw_window_s"], draw_seed=row["draw_seed"],
                drawn_at_ms=row["drawn_at_ms"], draw_entries=row["draw_entries"],
            )
        )
    skus = list(machine.skus)
    await _load_draw_entries(conn, machine)
    # Caps count every live purchase, including ones too old to keep in memory.
    for row in await conn.fetch(
        """SELECT sku, user_id, sum(qty)::int AS qty FROM purchases
           WHERE sku = ANY($1) AND status IN ('reserved', 'confirmed') GROUP BY sku, user_id""",
        skus,
    ):
        machine.user_qty[(row["sku"], row["user_id"])] = row["qty"]
    # Reserved purchases always (they hold stock), then the most recent decisions up to the cap.
    rows = await conn.fetch(
        f"""(SELECT {PURCHASE_COLUMNS} FROM purchases WHERE sku = ANY($1) AND status = 'reserved')
            UNION ALL
            (SELECT {PURCHASE_COLUMNS} FROM purchases WHERE sku = ANY($1) AND status <> 'reserved'
             ORDER BY decided_at_ms DESC LIMIT $2)""",
        skus, seen_max,
    )
    for row in sorted(rows, key=lambda r: r["decided_at_ms"]):
        machine.load_decision(decision_of(row))
    total: int = await conn.fetchval("SELECT count(*) FROM purchases WHERE sku = ANY($1)", skus)
    machine.forgot_any = total > len(machine.decisions)
    _check_counters(machine)
    return machine


async def _load_draw_entries(conn: asyncpg.Connection, machine: Machine) -> None:
    """The entries of every undecided draw: the same entries, so the same order, as the writer
    that took them would have decided."""
    if not machine.draws:
        return
    for row in await conn.fetch(
        "SELECT * FROM draw_entries WHERE sku = ANY($1) ORDER BY sku, arrival", list(machine.draws)
    ):
        machine.load_draw_entry(Entry(purchase=_entry_purchase(row), clicked_at_ms=row["clicked_at_ms"],
                                      arrival=row["arrival"], ranked=row["ranked"]))


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


async def lookup(conn: asyncpg.Connection, ids: list[str]) -> list[Decision | Purchase]:
    """What Postgres holds of these purchase ids: the decision, or for one still waiting in a
    draw, its purchase. One snapshot for both tables: a draw decided meanwhile moves its
    entries into purchases in one transaction, and must not be missed in both."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(f"SELECT {PURCHASE_COLUMNS} FROM purchases WHERE id = ANY($1)", ids)
        found: list[Decision | Purchase] = [decision_of(r) for r in rows]
        waiting = sorted(set(ids) - {d.id for d in found})
        if waiting:
            found += [_entry_purchase(r) for r in await conn.fetch(
                "SELECT * FROM draw_entries WHERE id = ANY($1)", waiting)]
    return found


def _entry_purchase(row: asyncpg.Record) -> Purchase:
    return Purchase(
        id=row["id"], sku=row["sku"], qty=row["qty"], user_id=row["user_id"],
        request_hash=row["request_hash"], accepted_at_ms=row["accepted_at_ms"],
    )


async def intent_seqs(conn: asyncpg.Connection, ids: list[str]) -> dict[str, int]:
    """Purchase id -> the intents stream sequence of the message holding its intent."""
    rows = await conn.fetch(
        "SELECT id, intent_seq FROM purchases WHERE id = ANY($1) AND intent_seq IS NOT NULL", ids
    )
    return {r["id"]: r["intent_seq"] for r in rows}


async def commit(
    conn: asyncpg.Connection, shard: int, epoch: int, ttl_ms: int, step: Step, now_ms: int,
    stored_at: dict[str, int] | None = None,
) -> None:
    """Write the Step in one transaction that first proves (and renews) the lease: a fenced
    committer's batch fails as a whole. Called for every batch that will be acked or announced,
    even one with no writes, so a zombie never acks or announces anything. `stored_at`: where
    the batch's purchase intents are stored (purchase id -> intents stream sequence)."""
    stored_at = stored_at or {}
    rows = sorted(step.inserts, key=lambda d: d.id)
    try:
        if not (step.updates or step.draw_entries or step.drawn):
            # The common batch (new purchases, their SKUs' counters) is one statement, and a
            # statement is a transaction of its own: one round trip, no BEGIN and COMMIT.
            await _write_batch(conn, shard, epoch, ttl_ms, step, rows, now_ms, stored_at)
            return
        async with conn.transaction():
            await _write_batch(conn, shard, epoch, ttl_ms, step, rows, now_ms, stored_at)
            if step.updates:
                await _update_purchases(conn, list(step.updates.values()), step.psp_refs)
            if step.draw_entries:
                await _insert_draw_entries(conn, step.draw_entries, stored_at)
            if step.drawn:
                await conn.execute("DELETE FROM draw_entries WHERE sku = ANY($1)", step.drawn)
    except asyncpg.UniqueViolationError as e:
        if e.constraint_name != PURCHASES_KEY:
            raise CorruptWrite(f"shard {shard}: Postgres refused the batch: {e}") from e
        # Another shard's writer inserted one of these ids (one key used with SKUs of two
        # shards), committed after this statement began. Nothing of the batch was written.
        held = await conn.fetch("SELECT id FROM purchases WHERE id = ANY($1)", [d.id for d in rows])
        if not held:
            raise  # gone again (retention): nothing written, the batch is read and decided anew
        raise DecidedElsewhere(sorted(r["id"] for r in held)) from e
    except asyncpg.IntegrityConstraintViolationError as e:
        # never_oversell or another CHECK refused the batch: the machine broke an invariant.
        raise CorruptWrite(f"shard {shard}: Postgres refused the batch: {e}") from e


# What every batch writes, in one statement (one round trip, all or nothing): the lease renewed
# as in renew_lease, then, only if it is still ours and no purchase of the batch waits in a
# draw of another SKU (one key reused, held by another shard's draw: `elsewhere`), the SKUs'
# rows and the new purchases. The result columns are read in this order, so rows are locked in
# the order of schema.TABLES. Purchases go in id order: two writers inserting one id (a key
# reused across shards) then wait for each other in one order only, so they never deadlock;
# the second fails on the first's row (a unique violation: the whole statement is undone).
# A purchase decided by a draw was taken by an earlier batch: its draw entry (deleted later in
# this transaction) knows where its intent is stored.
_WRITE_BATCH = f"""
WITH lease AS (
    UPDATE shard_leases SET renewed_at_ms = {_DB_NOW_MS}, expires_at_ms = {_DB_NOW_MS} + $3
    WHERE shard = $1 AND epoch = $2
    RETURNING 1
), elsewhere AS (
    SELECT u.id FROM unnest($19::text[], $20::text[]) AS u(id, sku)
    JOIN draw_entries e ON e.id = u.id AND e.sku <> u.sku
), go AS (
    SELECT FROM lease WHERE NOT EXISTS (SELECT FROM elsewhere)
), sku_rows AS (
    INSERT INTO skus (sku, stock, reserved, sold, price_cents, max_per_user, payment,
                      reservation_ttl_s, sale_start_ms, sale_end_ms, draw_window_s, draw_seed,
                      drawn_at_ms, draw_entries, updated_at_ms)
    SELECT u.*, $4::bigint FROM unnest($5::text[], $6::int[], $7::int[], $8::int[],
        $9::bigint[], $10::int[], $11::text[], $12::int[], $13::bigint[], $14::bigint[],
        $15::int[], $16::text[], $17::bigint[], $18::int[]) AS u
    WHERE EXISTS (SELECT FROM go)
    ON CONFLICT (sku) DO UPDATE SET
        stock = EXCLUDED.stock, reserved = EXCLUDED.reserved, sold = EXCLUDED.sold,
        price_cents = EXCLUDED.price_cents, max_per_user = EXCLUDED.max_per_user,
        payment = EXCLUDED.payment, reservation_ttl_s = EXCLUDED.reservation_ttl_s,
        sale_start_ms = EXCLUDED.sale_start_ms, sale_end_ms = EXCLUDED.sale_end_ms,
        draw_window_s = EXCLUDED.draw_window_s, draw_seed = EXCLUDED.draw_seed,
        drawn_at_ms = EXCLUDED.drawn_at_ms, draw_entries = EXCLUDED.draw_entries,
        updated_at_ms = EXCLUDED.updated_at_ms
    RETURNING 1
), purchase_rows AS (
    INSERT INTO purchases (id, sku, user_id, qty, status, reason, amount_cents,
                           accepted_at_ms, decided_at_ms, updated_at_ms, expires_at_ms,
                           request_hash, draw_rank, intent_seq)
    SELECT u.id, u.sku, u.user_id, u.qty, u.status, u.reason, u.amount_cents,
           u.accepted_at_ms, u.decided_at_ms, u.updated_at_ms, u.expires_at_ms,
           u.request_hash, u.draw_rank, COALESCE(u.intent_seq, e.intent_seq)
    FROM unnest($19::text[], $20::text[], $21::text[], $22::int[], $23::text[],
        $24::text[], $25::bigint[], $26::bigint[], $27::bigint[], $28::bigint[],
        $29::bigint[], $30::text[], $31::int[], $32::bigint[])
        WITH ORDINALITY AS u(id, sku, user_id, qty, status, reason, amount_cents,
                             accepted_at_ms, decided_at_ms, updated_at_ms, expires_at_ms,
                             request_hash, draw_rank, intent_seq, n)
    LEFT JOIN draw_entries e ON e.id = u.id
    WHERE EXISTS (SELECT FROM go)
    ORDER BY u.n
    RETURNING 1
)
SELECT (SELECT count(*) FROM lease) AS renewed, ARRAY(SELECT id FROM elsewhere) AS elsewhere,
       (SELECT count(*) FROM sku_rows) AS skus, (SELECT count(*) FROM purchase_rows) AS inserted
"""


async def _write_batch(
    conn: asyncpg.Connection, shard: int, epoch: int, ttl_ms: int, step: Step,
    rows: list[Decision], now_ms: int, stored_at: dict[str, int],
) -> None:
    """Renew the lease (else Fenced), write the step's SKUs and insert its new purchases `rows`
    (in id order). An id waiting in another SKU's draw: DecidedElsewhere, nothing written."""
    skus = list(step.skus.values())
    written = await conn.fetchrow(
        _WRITE_BATCH, shard, epoch, ttl_ms, now_ms,
        [s.sku for s in skus], [s.stock for s in skus], [s.reserved for s in skus],
        [s.sold for s in skus], [s.price_cents for s in skus], [s.max_per_user for s in skus],
        [s.payment for s in skus], [s.reservation_ttl_s for s in skus],
        [s.sale_start_ms for s in skus], [s.sale_end_ms for s in skus],
        [s.draw_window_s for s in skus], [s.draw_seed for s in skus],
        [s.drawn_at_ms for s in skus], [s.draw_entries for s in skus],
        [d.id for d in rows], [d.sku for d in rows], [d.user_id for d in rows],
        [d.qty for d in rows], [d.status for d in rows], [d.reason for d in rows],
        [d.amount_cents for d in rows], [d.accepted_at_ms for d in rows],
        [d.decided_at_ms for d in rows], [d.updated_at_ms for d in rows],
        [d.expires_at_ms for d in rows], [d.request_hash for d in rows],
        [d.draw_rank for d in rows], [stored_at.get(d.id) for d in rows],
    )
    assert written is not None  # a SELECT without FROM: always one row
    if written["renewed"] != 1:
        raise Fenced(f"shard {shard}: epoch {epoch} is no longer the lease holder")
    if written["elsewhere"]:
        raise DecidedElsewhere(sorted(written["elsewhere"]))
    if written["skus"] != len(skus) or written["inserted"] != len(rows):
        # Not reachable: with the lease ours and nothing elsewhere, every row is written or the
        # statement fails. Said loudly all the same, as the writer stops on it.
        raise CorruptWrite(f"shard {shard}: {written['skus']} of {len(skus)} SKU rows and "
                           f"{written['inserted']} of {len(rows)} purchases written")


async def _insert_draw_entries(
    conn: asyncpg.Connection, taken: list[Entry], stored_at: dict[str, int]
) -> None:
    entries = sorted(taken, key=lambda e: e.purchase.id)  # in id order, as purchases
    # An id in purchases for another SKU is decided (by another shard: its key reused): no entry
    # for it. One of this SKU is the entry's own, decided by its draw in this very step.
    inserted = await conn.fetch(
        """
        INSERT INTO draw_entries (id, sku, user_id, qty, request_hash, accepted_at_ms,
                                  clicked_at_ms, arrival, ranked, intent_seq)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[],
            $6::bigint[], $7::bigint[], $8::int[], $9::bool[], $10::bigint[])
            AS u(id, sku, user_id, qty, request_hash, accepted_at_ms, clicked_at_ms, arrival,
                 ranked, intent_seq)
        WHERE NOT EXISTS (SELECT FROM purchases p WHERE p.id = u.id AND p.sku <> u.sku)
        ON CONFLICT (id) DO NOTHING
        RETURNING id
        """,
        [e.purchase.id for e in entries], [e.purchase.sku for e in entries],
        [e.purchase.user_id for e in entries], [e.purchase.qty for e in entries],
        [e.purchase.request_hash for e in entries], [e.purchase.accepted_at_ms for e in entries],
        [e.clicked_at_ms for e in entries], [e.arrival for e in entries],
        [e.ranked for e in entries], [stored_at.get(e.purchase.id) for e in entries],
    )
    if len(inserted) != len(entries):
        # Another shard holds these ids (one key, a SKU of each), decided or in its draw.
        written = {r["id"] for r in inserted}
        raise DecidedElsewhere([e.purchase.id for e in entries if e.purchase.id not in written])


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
