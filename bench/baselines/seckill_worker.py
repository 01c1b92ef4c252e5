"""`python -m bench.baselines.seckill_worker --redis-url URL --database-url URL`

The `redis` baseline's writer: reads the order stream through its consumer group and writes the
orders to Postgres (`bench_orders`, `bench_skus.sold`) in one transaction per batch, then acks
the batch. A crash between commit and ack redelivers the batch; the order id is the primary key
and only newly inserted orders count towards `sold`, so nothing is written twice.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import asyncpg
import uvloop

from bench.baselines.seckill import GROUP, STREAM, Seckill
from proto.clock import now_ms

BATCH_MAX = 2_000
BLOCK_MS = 100
CONSUMER = "w1"

INSERT = """
WITH new AS (
    INSERT INTO bench_orders (id, sku, user_id, qty, status, reason, accepted_at_ms, decided_at_ms)
    SELECT id, sku, user_id, qty, 'confirmed', NULL, at, $6
    FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::bigint[]) AS o(id, sku, user_id, qty, at)
    ON CONFLICT (id) DO NOTHING
    RETURNING sku, qty
)
UPDATE bench_skus s SET sold = s.sold + n.qty
FROM (SELECT sku, sum(qty)::int AS qty FROM new GROUP BY sku) n WHERE s.sku = n.sku
"""

Entry = tuple[str, dict[str, str]]


async def write_batch(conn: asyncpg.Connection, entries: list[Entry]) -> None:
    cols: tuple[list[str], list[str], list[str], list[int], list[int]] = ([], [], [], [], [])
    for _, f in entries:
        cols[0].append(f["id"])
        cols[1].append(f["sku"])
        cols[2].append(f["user"])
        cols[3].append(int(f["qty"]))
        cols[4].append(int(f["at"]))
    async with conn.transaction():
        await conn.execute(INSERT, *cols, now_ms())


async def run(redis_url: str, database_url: str) -> None:
    store = Seckill.connect(redis_url, connections_max=2)
    await store.ensure_group()
    conn = await asyncpg.connect(database_url)
    start_id = "0"  # first our own unacked entries (after a restart), then new ones (">")
    try:
        while True:
            # RESP2 (the client's default): [[stream, [(id, {field: value}), ...]]], as str.
            got: Any = await store.client.xreadgroup(GROUP, CONSUMER, {STREAM: start_id},
                                                     count=BATCH_MAX, block=BLOCK_MS)
            entries: list[Entry] = [(str(i), dict(f)) for _, batch in got or [] for i, f in batch]
            if not entries:
                start_id = ">"
                continue
            await write_batch(conn, entries)
            await store.client.xack(STREAM, GROUP, *(i for i, _ in entries))
    finally:
        await conn.close()
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.baselines.seckill_worker")
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--database-url", required=True)
    args = ap.parse_args()
    uvloop.install()
    asyncio.run(run(args.redis_url, args.database_url))


if __name__ == "__main__":
    main()
