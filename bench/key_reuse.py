"""What finding a purchase id another shard decided costs a writer, per way of finding it:
asking Postgres for every batch's ids before deciding it, or letting the batch's insert meet the
row and deciding that batch again (what the writer does; see docs/architecture.md).

    python -m bench.key_reuse [--rows 200000] [--sizes 64,500] [--rounds 40]

An embedded PostgreSQL (the project's schema, `--rows` purchases already in it, nothing else
running) and the committer's own machine and store. Per batch size, the median of `--rounds`:

- `commit`: a batch of new purchases decided and committed (lease, SKU row, inserts), nothing
  asked first;
- `lookup + commit`: the same, after asking Postgres for the batch's ids (`store.lookup`, none
  of them there): what every batch would pay to find reused keys before deciding;
- `twin found by lookup`: a batch holding one id another shard decided, found by that question
  and refused without any redo;
- `twin met at insert`: the same id, nothing asked first (what the writer does; with the
  question, a race where the other shard commits after it): the insert meets the row, the
  transaction rolls back, the row is read, the step is undone and the batch decided and
  committed again (`committer.batch.decide`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg
import uvloop

from committer import store
from committer.batch import decide
from committer.machine import Machine
from committer.schema import apply_schema
from committer.step import Sku, Step
from flashsale.db import ensure_database
from launch.postgres_server import start_postgres
from proto.messages import Decision, Purchase

SHARD = 0
TTL_MS = 60_000


def purchases(prefix: str, n: int) -> list[Purchase]:
    return [Purchase(id=f"{prefix}{i:08d}", sku="s", qty=1, user_id=f"{prefix}u{i}",
                     request_hash="h", accepted_at_ms=1) for i in range(n)]


async def fill(conn: asyncpg.Connection, rows: int) -> None:
    await conn.execute(
        """INSERT INTO purchases (id, sku, user_id, qty, status, reason, amount_cents,
               request_hash, accepted_at_ms, decided_at_ms, updated_at_ms)
           SELECT 'old' || lpad(g::text, 9, '0'), 'other', 'u' || g, 1, 'confirmed', NULL, 0,
                  'h', 1, 1, 1
           FROM generate_series(1, $1) g""", rows)
    await conn.execute("ANALYZE purchases")


async def measure(conn: asyncpg.Connection, epoch: int, size: int, rounds: int) -> dict[str, float]:
    machine = Machine(SHARD)
    machine.load_sku(Sku(sku="s", stock=10**9))
    figures: dict[str, list[float]] = {name: [] for name in FIGURES}

    async def commit(step: Step) -> None:
        await store.commit(conn, SHARD, epoch, TTL_MS, step, 1)

    async def lookup(ids: list[str]) -> list[Decision | Purchase]:
        return await store.lookup(conn, ids)

    async def batch(name: str, intents: list[Purchase], ask_first: bool) -> Step:
        started = time.perf_counter()
        if ask_first:  # the question a writer could ask before every batch
            machine.found_in_postgres(await lookup([p.id for p in intents]))
        step = await decide(machine, list(intents), 1, commit, lookup)
        figures[name].append(time.perf_counter() - started)
        return step

    for r in range(rounds):
        await batch("commit", purchases(f"c{size}r{r}x", size), ask_first=False)
        await batch("lookup + commit", purchases(f"l{size}r{r}x", size), ask_first=True)
        # One id of each batch is already in Postgres, decided "by another shard": found by
        # the lookup, or (the lookup ran before the other shard committed) met by the insert.
        for name, ask_first in (("twin found by lookup", True), ("twin met at insert", False)):
            twin = Purchase(id=f"old{2 * r + ask_first + 1:09d}", sku="s", qty=1,
                            user_id="mallory", request_hash="other", accepted_at_ms=1)
            intents = purchases(f"t{size}r{r}{ask_first}x", size)
            intents[size // 2] = twin
            step = await batch(name, intents, ask_first)
            assert [x.kind for x in step.refusals] == ["purchase"]
    return {name: statistics.median(values) * 1000 for name, values in figures.items()}


FIGURES = ("commit", "lookup + commit", "twin found by lookup", "twin met at insert")


async def main(rows: int, sizes: list[int], rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="flashsale-key-reuse-") as tmp:
        pg = start_postgres(Path(tmp) / "pg")
        try:
            await ensure_database(pg.url)
            await apply_schema(pg.url, 1)
            conn = await asyncpg.connect(pg.url)
            try:
                await fill(conn, rows)
                epoch, _ = await store.acquire_lease(conn, SHARD, "bench", TTL_MS)
                assert epoch is not None
                print(f"purchases in the table: {rows:,}; ms per batch, median of {rounds}")
                print("| batch | " + " | ".join(FIGURES) + " |")
                print("| ---: |" + " ---: |" * len(FIGURES))
                for size in sizes:
                    f = await measure(conn, epoch, size, rounds)
                    print(f"| {size} | " + " | ".join(f"{f[name]:.2f}" for name in FIGURES) + " |")
            finally:
                await conn.close()
        finally:
            pg.stop()


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.key_reuse")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--sizes", default="64,500")
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    uvloop.run(main(args.rows, [int(s) for s in args.sizes.split(",")], args.rounds))


if __name__ == "__main__":
    cli()
