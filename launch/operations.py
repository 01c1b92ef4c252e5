"""Commands that prepare or maintain the system as a whole: the schema and streams, the shard
count, the intents streams' retention and the payment reconciliation."""

from __future__ import annotations

import argparse
import asyncio
import time

import msgspec

from committer.schema import apply_schema
from config.settings import Settings
from flashsale import shardmap
from flashsale.db import ensure_database, user_of
from flashsale.jetstream import connect_nats_for_command, ensure_streams
from flashsale.retention import purge_intents
from gateway import reconcile
from launch.dev_servers import settings_next_to_dev


async def prepare(settings: Settings) -> None:
    """Schema and streams: idempotent, safe to run at every start."""
    admin_url = settings.schema_database_url
    await ensure_database(admin_url)
    # The services' role, if they connect as another one than schema changes do: it gets the tables.
    service_role = user_of(settings.database_url)
    await apply_schema(admin_url, settings.shards,
                       service_role if service_role != user_of(admin_url) else None)
    nc = await connect_nats_for_command(settings, "flashsale-prepare")
    try:
        await ensure_streams(nc.jetstream(), settings)
    finally:
        await nc.close()


def cmd_schema(args: argparse.Namespace) -> int:
    asyncio.run(prepare(settings_next_to_dev()))
    print("schema and streams are in place")
    return 0


def cmd_purge_intents(args: argparse.Namespace) -> int:
    """Every intent recovery no longer needs, purged from each shard's intents stream
    (flashsale/retention.py): one JSON line per shard; with --every, again every S seconds."""
    settings = settings_next_to_dev()
    while True:
        for shard in asyncio.run(purge_intents(settings, dry_run=args.dry_run)):
            print(msgspec.json.encode(shard).decode(), flush=True)
        if args.every is None:
            return 0
        time.sleep(args.every)


def cmd_reshard(args: argparse.Namespace) -> int:
    before, after = asyncio.run(shardmap.reshard(settings_next_to_dev(), args.shards))
    if before.shards == after.shards:
        print(f"the system already has {after.shards} shards")
    else:
        print(f"shard map: {before.shards} -> {after.shards} shards. Start committers 0..{after.shards - 1} "
              f"and every process with FLASHSALE_SHARDS={after.shards}")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    """The gateway's reconciliation (gateway/reconcile.py), with its own options, against the
    servers `flashsale dev` runs unless the environment names others."""
    return reconcile.main(args.reconcile_args, settings_next_to_dev())
