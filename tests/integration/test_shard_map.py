"""One shard map, owned by the system (flashsale/shardmap.py): a process or command configured
for another shard count refuses to act, a committer refuses another shard's SKUs, and
`flashsale reshard` changes the count only between sales."""

from __future__ import annotations

import subprocess
import time

import msgspec
import nats

from launch import processes as procs
from proto.messages import Cancel, Purchase, SkuUpsert, encode, result_decoder
from proto.sharding import shard_of
from tests.conftest import System
from tests.integration.test_cli import flashsale
from tests.util import eventually

MISMATCH = "shard map mismatch: the system has 3 shards, this process is configured for 2"


def exits(p: procs.Process, timeout_s: float = 30.0) -> int:
    assert p.proc is not None
    try:
        return p.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        p.stop()
        raise AssertionError(f"{p.name} still runs:\n{p.log_tail()}") from None


async def test_a_shell_with_another_shard_count_is_refused(settings, db, tmp_path):
    """The operator's mistake: the system runs 3 shards, a shell without FLASHSALE_SHARDS=3 (its
    config file says 2) changes a SKU. Routed by 2, console-x went to a committer that does not
    own it, which rewrote it as a free SKU."""
    three = msgspec.structs.replace(settings, shards=3)
    assert shard_of("console-x", 3) != shard_of("console-x", 2)
    out = flashsale(settings, "reshard", "3")  # nothing ran yet: between sales
    assert out.returncode == 0, out.stderr
    assert await db.fetchval("SELECT shards FROM shard_map") == 3
    system = System(three, tmp_path / "logs")
    try:
        system.start(ingest=False)
        out = flashsale(three, "set-sku", "console-x", "--stock", "60", "--price-cents", "49900",
                        "--payment", "required")
        assert out.returncode == 0, out.stderr

        out = flashsale(settings, "set-sku", "console-x", "--stock", "60")
        assert out.returncode == 2
        assert out.stderr.strip() == f"flashsale: {MISMATCH} (FLASHSALE_SHARDS / shards in the " \
            "config file); set it to 3, or change the system's count between sales with " \
            "`flashsale reshard`"
        sale = tmp_path / "sale.toml"
        sale.write_text('[[sku]]\nsku = "console-x"\nstock = 60\n')
        out = flashsale(settings, "load-sale", str(sale))
        assert out.returncode == 2 and MISMATCH in out.stderr
        row = await db.fetchrow("SELECT stock, price_cents, payment, sold FROM skus WHERE sku = 'console-x'")
        assert tuple(row) == (60, 49900, "required", 0)

        # Services configured for 2 refuse to start, with one line saying why.
        committer = procs.committer(settings, 0, system.log_dir, "committer-of-2",
                                    status_port=procs.spare_port(three)).start()
        assert exits(committer) == 2
        assert MISMATCH in committer.log_tail()
        ingest = procs.ingest(settings, system.log_dir, "ingest-of-2").start()
        assert exits(ingest) == 2
        assert MISMATCH in ingest.log_tail()
        assert "Traceback" not in ingest.log_tail() + committer.log_tail()
        # ... and `flashsale schema` does not rewrite the map either.
        out = flashsale(settings, "schema")
        assert out.returncode == 2 and MISMATCH in out.stderr
        assert await db.fetchval("SELECT shards FROM shard_map") == 3
    finally:
        system.stop()


async def test_a_committer_refuses_and_answers_another_shards_skus(system, settings, db):
    """Intents sent to shard 0 for a SKU of shard 1 (what a sender with another map does) are
    refused, acked and answered; nothing is written; the shard's own intents carry on; one log line."""
    system.start(ingest=False)
    foreign = next(f"x{i}" for i in range(100) if shard_of(f"x{i}", 2) == 1)
    own = next(f"y{i}" for i in range(100) if shard_of(f"y{i}", 2) == 0)
    names = settings.names
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    refused: dict[str, str] = {}

    async def on_result(msg):
        for r in result_decoder.decode(msg.data).refusals:
            refused[r.key] = r.reason

    sub = await nc.subscribe(names.results_all(), cb=on_result)
    now = int(time.time() * 1000)
    intents = [("sku_upsert", "r-foreign", SkuUpsert(request_id="r-foreign", sku=foreign, stock=60))]
    intents += [("purchase", f"f{i}", Purchase(id=f"f{i}", sku=foreign, qty=60, user_id=f"u{i}",
                                               request_hash="h", accepted_at_ms=now)) for i in range(5)]
    intents += [("sku_upsert", "r-own", SkuUpsert(request_id="r-own", sku=own, stock=1)),
                ("purchase", "o1", Purchase(id="o1", sku=own, qty=1, user_id="u", request_hash="h",
                                            accepted_at_ms=now))]
    for kind, key, intent in intents:
        await js.publish(names.intent(0, kind, key), encode(intent))

    await eventually(lambda: db.fetchval("SELECT status = 'confirmed' FROM purchases WHERE id = 'o1'"))
    await eventually(lambda: _all_in(refused, ["r-foreign", "f0", "f1", "f2", "f3", "f4"]))
    assert {refused[k] for k in ["r-foreign", "f0", "f4"]} == {"wrong_shard"}
    assert await db.fetchval("SELECT count(*) FROM skus WHERE sku = $1", foreign) == 0
    assert await db.fetchval("SELECT count(*) FROM purchases WHERE sku = $1", foreign) == 0
    info = await js.consumer_info(names.intents_stream(0), names.committer_durable(0))
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    log = system.processes["committer-0"].log_tail(200)
    assert log.count("refusing intents for SKUs of other shards") == 1
    await sub.unsubscribe()
    await nc.close()


async def _all_in(found: dict[str, str], keys: list[str]) -> bool:
    return all(k in found for k in keys)


async def test_reshard_only_between_sales(system, settings, db):
    system.start(ingest=False)
    out = flashsale(settings, "reshard", "3")
    assert out.returncode == 2 and "committers hold live leases" in out.stderr, out.stderr

    out = flashsale(settings, "set-sku", "paid", "--stock", "5", "--payment", "required")
    assert out.returncode == 0, out.stderr
    system.stop()
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    shard = shard_of("paid", 2)
    p = Purchase(id="p1", sku="paid", qty=1, user_id="u", request_hash="h",
                 accepted_at_ms=int(time.time() * 1000))
    await js.publish(settings.names.intent(shard, "purchase", p.id), encode(p))
    await nc.close()
    out = flashsale(settings, "reshard", "3")
    assert out.returncode == 2 and f"1 intents of shard {shard} are not decided yet" in out.stderr

    system.start_committer(shard)  # decides it: a reservation (no gateway runs here)
    await eventually(lambda: db.fetchval("SELECT status = 'reserved' FROM purchases WHERE id = 'p1'"))
    system.stop()
    out = flashsale(settings, "reshard", "3")
    assert out.returncode == 2 and "1 purchases are reserved" in out.stderr
    assert await db.fetchval("SELECT shards FROM shard_map") == 2

    # The buyer gives it back; now the system is between sales.
    system.start_committer(shard)
    nc = await nats.connect(settings.nats_url)
    await nc.jetstream().publish(settings.names.intent(shard, "cancel", "p1"), encode(Cancel(id="p1")))
    await nc.close()
    await eventually(lambda: db.fetchval("SELECT status = 'cancelled' FROM purchases WHERE id = 'p1'"))
    system.stop()
    out = flashsale(settings, "reshard", "3")
    assert out.returncode == 0, out.stderr
    assert "shard map: 2 -> 3 shards" in out.stdout
    # Three committers pick up the SKUs the new map gives them; the old count is refused.
    three = msgspec.structs.replace(settings, shards=3)
    resharded = System(three, system.log_dir / "resharded")
    try:
        resharded.start(ingest=False)
        out = flashsale(three, "set-sku", "paid", "--stock", "7")
        assert out.returncode == 0, out.stderr
        row = await db.fetchrow("SELECT stock, reserved, sold, payment FROM skus WHERE sku = 'paid'")
        assert tuple(row) == (7, 0, 0, "required")
        assert flashsale(settings, "set-sku", "paid", "--stock", "8").returncode == 2
    finally:
        resharded.stop()


async def test_a_running_ingest_stops_when_the_map_changes_under_it(settings, db, tmp_path):
    """Resharding needs no committer running, but an ingest left running would route SKUs by
    the old count: it notices the change and stops, saying why."""
    ingest = procs.ingest(settings, tmp_path / "logs", "ingest-of-2").start()
    try:
        ingest.wait_http_ok(procs.ingest_ready_url(settings))
        out = flashsale(settings, "reshard", "3")
        assert out.returncode == 0, out.stderr
        assert exits(ingest) == 2
        assert MISMATCH in ingest.log_tail() and "Traceback" not in ingest.log_tail()
    finally:
        ingest.stop()
