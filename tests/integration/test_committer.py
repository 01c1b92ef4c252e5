"""The committer against real NATS JetStream and Postgres, fed intents straight from NATS."""

from __future__ import annotations

import asyncio
import signal
import time

import asyncpg
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from committer import store
from committer.links import end_stalled_holder, postgres_session
from committer.schema import apply_schema
from flashsale.ports import free_port
from flashsale.urls import PG_SERVICE_ROLE
from launch.processes import committer_ready_url
from proto.messages import IntentBatch, Purchase, ResultBatch, SkuUpsert, encode, result_decoder
from proto.sharding import shard_of
from tests.integration.test_server_privileges import service_url
from tests.util import eventually


async def publish_intent(js, settings, intent, kind: str, key: str, sku: str) -> None:
    subject = settings.names.intent(shard_of(sku, settings.shards), kind, key)
    await js.publish(subject, encode(intent), headers={"Nats-Msg-Id": f"{kind}:{key}"})


async def listen_to_results(settings) -> tuple[NATS, JetStreamContext, list[ResultBatch]]:
    """A NATS client of the stack, its JetStream (to publish intents with), and the list each
    ResultBatch it hears is added to (closing the client ends it)."""
    nc = await nats.connect(settings.nats_url)
    results: list[ResultBatch] = []

    async def on_result(msg):
        results.append(result_decoder.decode(msg.data))

    await nc.subscribe(settings.names.results_all(), cb=on_result)
    return nc, nc.jetstream(), results


async def test_decides_commits_and_announces(system, settings, db):
    system.start(ingest=False)
    nc, js, results = await listen_to_results(settings)
    upsert = SkuUpsert(request_id="r1", sku="hot", stock=3, price_cents=250)
    await publish_intent(js, settings, upsert, "sku_upsert", "r1", "hot")
    now = int(time.time() * 1000)
    for i in range(5):
        p = Purchase(id=f"p{i}", sku="hot", qty=1, user_id=f"u{i}", request_hash="h", accepted_at_ms=now)
        await publish_intent(js, settings, p, "purchase", p.id, "hot")
    await eventually(lambda: db.fetchval("SELECT count(*) = 5 FROM purchases"))
    rows = await db.fetch("SELECT status, reason, amount_cents FROM purchases ORDER BY id")
    assert [r["status"] for r in rows].count("confirmed") == 3
    assert {r["reason"] for r in rows if r["status"] == "rejected"} == {"sold_out"}
    assert await db.fetchval("SELECT sold FROM skus WHERE sku = 'hot'") == 3
    await eventually(lambda: asyncio.sleep(0, sum(len(b.decisions) for b in results) >= 5))
    assert any("r1" in b.admin_applied for b in results)
    await nc.close()


async def test_packed_messages_are_decided_as_units_and_each_id_once(system, settings, db):
    """Ingest's format: many intents per message. A purchase stored twice (a retry another
    instance could not see; the same key with another body) is decided once, by its first copy;
    a copy with the same body hears that decision again, one with another body is refused.
    With batch_max 2 a transaction takes one message at a time (whole messages, about batch_max
    intents), the rest of a fetch waits."""
    system.settings = msgspec.structs.replace(settings, batch_max=2)
    system.start(ingest=False)
    nc, js, results = await listen_to_results(settings)
    shard = shard_of("hot", settings.shards)
    await publish_intent(js, settings, SkuUpsert(request_id="r1", sku="hot", stock=10), "sku_upsert",
                         "r1", "hot")
    now = int(time.time() * 1000)

    def buy(i: int, body: str = "h", qty: int = 1) -> Purchase:
        return Purchase(id=f"p{i}", sku="hot", qty=qty, user_id=f"u{i}", request_hash=body,
                        accepted_at_ms=now)

    async def packed(n: int, intents: list[Purchase]) -> int:
        subject = settings.names.intent_batch(shard, f"test-{n}")
        return (await js.publish(subject, encode(IntentBatch(intents=list(intents))))).seq

    first = await packed(1, [buy(i) for i in range(4)])
    # p1 again with the same body, p2 with another body and qty 5, in the same and the next message.
    await packed(2, [buy(1), buy(2, body="other", qty=5), buy(4), buy(4, body="other", qty=5)])
    await eventually(lambda: db.fetchval("SELECT count(*) = 5 FROM purchases"))
    rows = await db.fetch("SELECT id, qty, request_hash, intent_seq FROM purchases ORDER BY id")
    assert [(r["id"], r["qty"], r["request_hash"]) for r in rows] == [
        (f"p{i}", 1, "h") for i in range(5)
    ]
    assert [r["intent_seq"] for r in rows] == [first] * 4 + [first + 1]
    assert await db.fetchval("SELECT sold FROM skus WHERE sku = 'hot'") == 5
    await eventually(lambda: asyncio.sleep(0, sum(len(b.refusals) for b in results) >= 2))
    announced = [d for b in results for d in b.decisions]
    assert {d.request_hash for d in announced if d.id in ("p2", "p4")} == {"h"}
    assert sorted(d.id for d in announced) == ["p0", "p1", "p1", "p2", "p3", "p4"]
    refused = [r for b in results for r in b.refusals]
    assert sorted((r.kind, r.key, r.request_hash) for r in refused) == [
        ("purchase", "p2", "other"), ("purchase", "p4", "other")]
    await nc.close()


async def test_second_committer_fences_the_first(system, settings, db):
    system.start(ingest=False)
    shard = shard_of("hot", settings.shards)
    first = system.processes[f"committer-{shard}"]
    epoch1 = await db.fetchval("SELECT epoch FROM shard_leases WHERE shard = $1", shard)
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    upsert = SkuUpsert(request_id="r1", sku="hot", stock=1000)
    await publish_intent(js, settings, upsert, "sku_upsert", "r1", "hot")
    await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM skus"))
    # A second committer is a standby while the first renews its lease; it takes over once the
    # first stalls past the lease TTL (SIGSTOP), and the first, woken up, is fenced.
    port = free_port()
    second = system.start_committer(shard, name="committer-second", status_port=port, wait=False)
    await asyncio.sleep(settings.lease_ttl_s)
    assert await db.fetchval("SELECT epoch FROM shard_leases WHERE shard = $1", shard) == epoch1
    first.proc.send_signal(signal.SIGSTOP)
    await asyncio.to_thread(second.wait_http_ok, committer_ready_url(settings, shard, port))
    first.proc.send_signal(signal.SIGCONT)
    epoch2 = await db.fetchval("SELECT epoch FROM shard_leases WHERE shard = $1", shard)
    assert epoch2 == epoch1 + 1
    now = int(time.time() * 1000)
    for i in range(200):
        p = Purchase(id=f"p{i}", sku="hot", qty=1, user_id=f"u{i}", request_hash="h", accepted_at_ms=now)
        await publish_intent(js, settings, p, "purchase", p.id, "hot")
    await eventually(lambda: db.fetchval("SELECT count(*) = 200 FROM purchases"))
    # The old holder's next batch was fenced: it exited, and only the new one commits.
    await eventually(lambda: asyncio.sleep(0, not first.alive), timeout_s=10)
    assert first.proc.returncode == 3
    assert second.alive
    assert await db.fetchval("SELECT sold FROM skus WHERE sku = 'hot'") == 200
    await nc.close()


async def test_idle_writer_heartbeats_with_its_progress(system, settings):
    """Every ResultBatch says how far the writer got (decided_seq: INTENTS stream sequence); an
    idle writer sends empty ones about every heartbeat_s, so readers can tell it is alive."""
    system.start(ingest=False)
    nc, js, batches = await listen_to_results(settings)
    shard = shard_of("hot", settings.shards)
    upsert = SkuUpsert(request_id="r1", sku="hot", stock=5)
    await publish_intent(js, settings, upsert, "sku_upsert", "r1", "hot")
    now = int(time.time() * 1000)
    p = Purchase(id="p1", sku="hot", qty=1, user_id="u1", request_hash="h", accepted_at_ms=now)
    ack = await js.publish(settings.names.intent(shard, "purchase", p.id), encode(p))

    def heartbeat_after_purchase() -> bool:
        return any(b.shard == shard and not b.decisions and b.decided_seq >= ack.seq for b in batches)

    await eventually(lambda: asyncio.sleep(0, heartbeat_after_purchase()), timeout_s=10)
    decided = next(b for b in batches if any(d.id == "p1" for d in b.decisions))
    assert decided.decided_seq == ack.seq
    await eventually(lambda: asyncio.sleep(0, len([b for b in batches if b.shard != shard]) >= 2))
    idle = [b for b in batches if b.shard != shard]
    assert all(not b.decisions and b.decided_seq == 0 for b in idle)
    await nc.close()


async def test_writer_stalled_inside_a_transaction_is_cut_off(settings, db):
    """A writer stopped between two statements of a batch holds the lease row locked; Postgres
    ends its session after lease_ttl_s, so a standby takes the shard instead of waiting forever."""
    ttl_ms = int(settings.lease_ttl_s * 1000)
    session = postgres_session(settings, 0)
    writer = await asyncpg.connect(settings.database_url, server_settings=session)
    standby = await asyncpg.connect(settings.database_url, server_settings=session)
    try:
        epoch = await stall_holding_the_lease(writer, ttl_ms)
        taken = await eventually(
            lambda: _first(store.acquire_lease(standby, 0, "standby", ttl_ms)), timeout_s=20)
        assert taken == epoch + 1
        # Its session was ended by the server (asyncpg says so one way or another, depending on
        # when it notices: an error from the server, a closed connection, or a confused state).
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)):
            await writer.fetchval("SELECT 1")
    finally:
        writer.terminate()
        await standby.close()


async def test_a_writer_stalled_where_postgres_waits_on_it_is_ended_by_the_standby(
        servers, settings, db):
    """A writer stopped in the middle of the extended protocol (asyncpg prepares a statement with
    Parse, Describe and Flush, no Sync) is not idle in a transaction for Postgres, whose idle
    timeout then never ends it: a session with that timeout off stands for it here. While its
    lease is live nothing happens to it; once the lease has expired the standby ends its session
    and takes the shard. Both connect as the services do, as the service role."""
    await apply_schema(settings.database_url, settings.shards, PG_SERVICE_ROLE)
    url = service_url(servers, settings)
    ttl_ms = int(settings.lease_ttl_s * 1000)
    stalls = {**postgres_session(settings, 0), "idle_in_transaction_session_timeout": "0"}
    writer = await asyncpg.connect(url, server_settings=stalls)
    standby = await asyncpg.connect(url, server_settings=postgres_session(settings, 0))
    try:
        epoch = await stall_holding_the_lease(writer, ttl_ms)
        assert await end_stalled_holder(standby, 0) is None  # its lease is live

        async def take() -> int | None:
            taken, _ = await store.acquire_lease(standby, 0, "standby", ttl_ms)
            if taken is None:
                await end_stalled_holder(standby, 0)
            return taken

        assert await eventually(take, timeout_s=20) == epoch + 1
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)):
            await writer.fetchval("SELECT 1")
    finally:
        writer.terminate()
        await standby.close()


async def stall_holding_the_lease(writer: asyncpg.Connection, ttl_ms: int) -> int:
    """Take shard 0's lease on `writer`, then stall inside a transaction that holds its row
    locked (renewed, not committed): the epoch held."""
    epoch, _ = await store.acquire_lease(writer, 0, "writer", ttl_ms)
    assert epoch is not None
    await writer.transaction().start()
    await store.renew_lease(writer, 0, epoch, ttl_ms)
    return epoch


async def _first(claim):
    return (await claim)[0]
