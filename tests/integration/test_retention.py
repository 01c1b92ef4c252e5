"""`flashsale purge-intents`: decided intents leave the intents streams; the intents recovery
still needs (undecided, or a purchase still reserved: its card token) stay; a late retry of a
purged purchase gets the decision already made, not a second order."""

from __future__ import annotations

import asyncio
import secrets
import time

import nats
import nats.js.errors
import pytest

from flashsale.retention import purge_intents
from proto.messages import Purchase, SkuUpsert, encode
from proto.sharding import shard_of
from tests.util import eventually

FREE, PAID = "free-sku", "paid-sku"


@pytest.fixture
async def js(settings):
    nc = await nats.connect(settings.nats_url)
    yield nc.jetstream()
    await nc.close()


async def _upsert(js, settings, sku: str, **fields) -> None:
    rid = "r_" + secrets.token_hex(4)
    upsert = SkuUpsert(request_id=rid, sku=sku, stock=1000, **fields)
    await js.publish(settings.names.intent(shard_of(sku, settings.shards), "sku_upsert", rid), encode(upsert))


async def _buy(js, settings, sku: str, n: int) -> list[Purchase]:
    now = int(time.time() * 1000)
    purchases = [Purchase(id=f"p_{sku}_{i}", sku=sku, qty=1, user_id=f"u{i}", request_hash="h",
                          accepted_at_ms=now, payment_token="tok_visa") for i in range(n)]
    for p in purchases:
        await js.publish(settings.names.intent(shard_of(sku, settings.shards), "purchase", p.id), encode(p))
    return purchases


async def _stored(js, settings, p: Purchase) -> bool:
    shard = shard_of(p.sku, settings.shards)
    try:
        await js.get_last_msg(settings.names.intents_stream(shard),
                              settings.names.intent(shard, "purchase", p.id), direct=True)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def test_purge_keeps_what_recovery_needs_and_a_late_retry_stays_one_order(system, settings, db, js):
    system.start(ingest=False)  # committers only: nobody pays, so paid purchases stay reserved
    await _upsert(js, settings, FREE)
    await _upsert(js, settings, PAID, price_cents=500, payment="required", reservation_ttl_s=600)
    await eventually(lambda: db.fetchval("SELECT count(*) = 2 FROM skus"), 20)
    free = await _buy(js, settings, FREE, 30)
    paid = await _buy(js, settings, PAID, 10)
    await eventually(lambda: db.fetchval("SELECT count(*) = 40 FROM purchases"), 20)
    assert await db.fetchval("SELECT count(*) FROM purchases WHERE status = 'reserved'") == 10

    dry = await purge_intents(settings, dry_run=True)
    assert all(s.messages_after == s.messages_before for s in dry)
    report = await purge_intents(settings)
    print(report)
    assert sum(s.live_purchases for s in report) == 10
    assert all(await asyncio.gather(*(_stored(js, settings, p) for p in paid)))  # card tokens kept
    # Every decided intent went, except those the oldest reserved one's sequence shelters.
    paid_shard = shard_of(PAID, settings.shards)
    gone = [p for p in free if not await _stored(js, settings, p)]
    if shard_of(FREE, settings.shards) != paid_shard:
        assert len(gone) == len(free)
    assert sum(s.messages_before - s.messages_after for s in report) > 0

    # A late retry of a purged purchase: the decision already made, no second order.
    [retry, *_] = gone or free
    before = await db.fetchrow("SELECT status, decided_at_ms FROM purchases WHERE id = $1", retry.id)
    await js.publish(settings.names.intent(shard_of(FREE, settings.shards), "purchase", retry.id),
                     encode(retry))
    marker = Purchase(id="p_marker", sku=FREE, qty=1, user_id="u-marker", request_hash="h",
                      accepted_at_ms=int(time.time() * 1000))  # decided after the retry, same shard
    await js.publish(settings.names.intent(shard_of(FREE, settings.shards), "purchase", marker.id),
                     encode(marker))
    await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM purchases WHERE id = $1", marker.id), 20)
    assert await db.fetchrow("SELECT status, decided_at_ms FROM purchases WHERE id = $1", retry.id) == before
    assert await db.fetchval("SELECT sold FROM skus WHERE sku = $1", FREE) == 31
