"""The shard map: how many shards there are and which function puts a SKU on one.

The system stores it once, in Postgres (`shard_map`, one row): the first schema application
writes it from `shards` (committer/schema.py), and only `flashsale reshard` changes it, between
sales. Every process and command that routes or decides by shard (committers, ingest, `set-sku`,
`load-sale`, `flashsale dev`) compares its configured `shards` and its `shard_of` with the stored
map before it acts, and refuses with one line on a mismatch: a shell with another count must
not send a SKU change to a committer that does not own the SKU. A running ingest reads the map
again every few seconds and stops on a change.
"""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import nats.js.errors
from nats.js import JetStreamContext

from config.settings import Settings
from flashsale.db import DB_NOW_MS, SCHEMA_LOCK_KEY
from flashsale.jetstream import connect_nats_for_command, ensure_streams
from proto.sharding import SHARD_FUNCTION
from proto.subjects import Names

# How long `reshard` waits for a lease row a committer holds mid-batch: it is running, refuse.
_LEASE_LOCK_TIMEOUT = "2s"


class ShardMap(msgspec.Struct, frozen=True):
    shards: int
    function: str  # proto.sharding.SHARD_FUNCTION of whoever wrote it
    changed_at_ms: int  # the database's clock


class ShardMapError(RuntimeError):
    """No map, or a process configured unlike it: refuse to act. The message is the one line
    an operator needs."""


# asyncpg's Connection and Pool both answer fetchrow.
Queryable = asyncpg.Connection | asyncpg.Pool


async def read(db: Queryable) -> ShardMap | None:
    row = await db.fetchrow("SELECT shards, function, changed_at_ms FROM shard_map")
    if row is None:
        return None
    return ShardMap(shards=row["shards"], function=row["function"], changed_at_ms=row["changed_at_ms"])


def mismatch(stored: ShardMap | None, shards: int) -> str | None:
    """Why a process configured for `shards` must not act under `stored`; None if it may."""
    if stored is None:
        return "no shard map in the database: run `flashsale schema` (or `flashsale dev`) first"
    if stored.function != SHARD_FUNCTION:
        return (f"shard map mismatch: the system assigns SKUs with {stored.function!r}, "
                f"this process with {SHARD_FUNCTION!r}")
    if stored.shards != shards:
        return (f"shard map mismatch: the system has {stored.shards} shards, this process is "
                f"configured for {shards} (FLASHSALE_SHARDS / shards in the config file); "
                f"set it to {stored.shards}, or change the system's count between sales with "
                "`flashsale reshard`")
    return None


async def check(db: Queryable, shards: int) -> ShardMap:
    """The stored map, if a process configured for `shards` agrees with it; else ShardMapError."""
    stored = await read(db)
    problem = mismatch(stored, shards)
    if problem is not None:
        raise ShardMapError(problem)
    assert stored is not None
    return stored


async def check_at(database_url: str, shards: int) -> ShardMap:
    """`check` for a one-shot command, on a connection of its own."""
    conn = await asyncpg.connect(database_url)
    try:
        return await check(conn, shards)
    finally:
        await conn.close()


async def changed(database_url: str, shards: int, interval_s: float) -> ShardMapError:
    """Returns once the stored map stops agreeing with `shards`: for a long-running process that
    routes by the count it started with (resharding needs no committer running, but an ingest
    left running would route SKUs by the old count). A Postgres that does not answer is not a
    change: the map is read again next round."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.wait_for(check_at(database_url, shards), interval_s)
        except ShardMapError as e:
            return e
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            continue


class ReshardRefused(ShardMapError):
    """The system is not between sales; the message says what is still going on."""


async def reshard(settings: Settings, shards: int) -> tuple[ShardMap, ShardMap]:
    """Change the system's shard count to `shards` (the map before, the map after), only between
    sales, when nothing is bound to the old SKU -> shard assignment. Checked in one transaction
    that holds every lease row, so no committer can start meanwhile:

    - no committer holds a live lease (stop them all first: each one routes by the old count);
    - no purchase is `reserved` (its payment's confirm goes to the shard that reserved it);
    - no intent waits undecided in any shard's intents stream (its shard was chosen by the old
      count).

    Then it creates the intents and payments streams of any new shard. Ingest processes must be
    restarted with the new count too (they refuse to start with the old one)."""
    if shards < 1:
        raise ReshardRefused(f"shards must be >= 1, not {shards}")
    conn = await asyncpg.connect(settings.schema_database_url)  # the service role may only read it
    try:
        before = await read(conn)
        problem = mismatch(before, before.shards if before else shards)
        if problem is not None:
            raise ShardMapError(problem)
        assert before is not None
        nc = await connect_nats_for_command(settings, "flashsale-reshard")
        try:
            js = nc.jetstream()
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY)
                await conn.execute(f"SET LOCAL lock_timeout = '{_LEASE_LOCK_TIMEOUT}'")
                await _refuse_unless_between_sales(conn, js, settings.names, before.shards)
                await conn.execute(
                    f"UPDATE shard_map SET shards = $1, function = $2, changed_at_ms = {DB_NOW_MS}",
                    shards, SHARD_FUNCTION,
                )
            after = await check(conn, shards)
            await ensure_streams(js, msgspec.structs.replace(settings, shards=shards))
        finally:
            await nc.close()
        return before, after
    finally:
        await conn.close()


async def _refuse_unless_between_sales(
    conn: asyncpg.Connection, js: JetStreamContext, names: Names, shards: int
) -> None:
    try:
        leases = await conn.fetch(
            f"SELECT shard, owner, expires_at_ms > {DB_NOW_MS} AS live FROM shard_leases "
            "ORDER BY shard FOR UPDATE"
        )
    except asyncpg.LockNotAvailableError:
        raise ReshardRefused("a committer is writing (its lease row is locked): stop every "
                             "committer first") from None
    live = [f"shard {r['shard']} by {r['owner']}" for r in leases if r["live"]]
    if live:
        raise ReshardRefused(f"committers hold live leases ({', '.join(live)}): stop every "
                             "committer first")
    reserved = await conn.fetchval("SELECT count(*) FROM purchases WHERE status = 'reserved'")
    if reserved:
        raise ReshardRefused(f"{reserved} purchases are reserved: wait until they are paid, "
                             "released or expired (their committers must run for that)")
    for shard in range(shards):
        undecided = await _undecided_intents(js, names, shard)
        if undecided:
            raise ReshardRefused(f"{undecided} intents of shard {shard} are not decided yet: "
                                 "let its committer drain them first")


async def _undecided_intents(js: JetStreamContext, names: Names, shard: int) -> int:
    try:
        info = await js.consumer_info(names.intents_stream(shard), names.committer_durable(shard))
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    except nats.js.errors.NotFoundError:
        pass  # no committer ever read this shard: everything in its stream is undecided
    try:
        stream = await js.stream_info(names.intents_stream(shard))
    except nats.js.errors.NotFoundError:
        return 0
    return int(stream.state.messages)
