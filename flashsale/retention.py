"""How long a shard's intents stream keeps an intent, and the purge of what recovery no longer needs.

An intent is needed while it is undecided: the shard's committer acks it (its durable consumer's
ack floor moves past it) only once the batch that decided it is committed in Postgres. A purchase
intent is needed longer when its purchase is still `reserved` or waits in a draw: its card token
lives only there, and a rebuilt committer reads it back to publish the payment job again.
Everything else is in Postgres for good, so it may go:

- a late retry of a purged purchase (same Idempotency-Key) is stored again, and the committer
  answers it with the decision already in `purchases` (the id is the primary key): never a second
  order. What is lost is only ingest's 422 for a retry with another body (the stored request hash
  it compares with is gone);
- a confirm or release a gateway sends again after a purge is refused by the committer as
  already decided, as after `intents_max_age_s`.

`purge_intents` removes, per shard, every message below the oldest one still needed (JetStream
purge up to a sequence), so a stream filled by a sale is empty again without waiting for
`intents_max_age_s`. Safe beside the running services: the ack floor is read before the live
purchases, so a purchase decided meanwhile is above the floor and kept.
"""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import nats.js.errors
from nats.js import JetStreamContext

from config.settings import Settings
from flashsale import shardmap
from flashsale.jetstream import connect_nats_for_command
from proto.sharding import shard_of

LOOKUPS_MAX = 64  # concurrent direct gets of live purchases' intents sent alone


class ShardPurge(msgspec.Struct, frozen=True):
    """What the purge did (or, dry run, would do) on one shard's intents stream."""

    shard: int
    stream: str
    messages_before: int
    decided_upto_seq: int  # the committer's ack floor: every intent up to it is decided
    live_purchases: int  # reserved or in a draw: their intents are kept
    kept_from_seq: int  # messages below it are purged
    messages_after: int


async def purge_intents(settings: Settings, dry_run: bool = False) -> list[ShardPurge]:
    nc = await connect_nats_for_command(settings, "flashsale-purge-intents")
    conn = await asyncpg.connect(settings.database_url)
    try:
        js = nc.jetstream()
        stored = await shardmap.read(conn)
        shards = stored.shards if stored is not None else settings.shards
        names = settings.names
        # The ack floors first: whatever is decided after this read is above them.
        floors = {}
        for shard in range(shards):
            try:
                info = await js.consumer_info(names.intents_stream(shard), names.committer_durable(shard))
            except nats.js.errors.NotFoundError:
                continue  # no committer has run on it: nothing is decided
            floors[shard] = info.ack_floor.stream_seq if info.ack_floor else 0
        # Where each live purchase's intent is stored (intent_seq), by shard.
        live: dict[int, list[tuple[str, int | None]]] = {}
        for r in await conn.fetch(
            """SELECT id, sku, intent_seq FROM purchases WHERE status = 'reserved'
               UNION SELECT id, sku, intent_seq FROM draw_entries"""
        ):
            live.setdefault(shard_of(r["sku"], shards), []).append((r["id"], r["intent_seq"]))
        return [await _purge_shard(js, settings, shard, floor, live.get(shard, []), dry_run)
                for shard, floor in floors.items()]
    finally:
        await conn.close()
        await nc.close()


async def _purge_shard(js: JetStreamContext, settings: Settings, shard: int, decided_upto: int,
                       live: list[tuple[str, int | None]], dry_run: bool) -> ShardPurge:
    names = settings.names
    stream = names.intents_stream(shard)
    lookups = asyncio.Semaphore(LOOKUPS_MAX)

    async def seq_of(purchase_id: str, intent_seq: int | None) -> int | None:
        if intent_seq is not None:
            return intent_seq
        # Stored on a subject of its own (an intent sent alone): look it up there.
        async with lookups:
            try:
                msg = await js.get_last_msg(stream, names.intent(shard, "purchase", purchase_id), direct=True)
            except nats.js.errors.NotFoundError:
                return None  # another shard's, or aged out
        return msg.seq

    kept = [seq for seq in await asyncio.gather(*(seq_of(*p) for p in live)) if seq is not None]
    keep_from = min([decided_upto + 1, *kept])
    before = (await js.stream_info(stream)).state
    if not dry_run and keep_from > before.first_seq:
        await js.purge_stream(stream, seq=keep_from)
    after = before if dry_run else (await js.stream_info(stream)).state
    return ShardPurge(shard=shard, stream=stream, messages_before=before.messages,
                      decided_upto_seq=decided_upto, live_purchases=len(kept),
                      kept_from_seq=keep_from, messages_after=after.messages)
