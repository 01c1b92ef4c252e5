"""SKU event streams as a per-client resource, against a real ingest: they count against the
client's wait budget with long-polls, `sku_streams_max` is sized from the fd budget, both
framings (chunked HTTP/1.1, plain HTTP/1.0) carry the feed's updates, and 2,000 idle streams
on the SKU a buyer buys leave the buyer served (its latency reported, not asserted)."""

from __future__ import annotations

import asyncio

import msgspec

from tests.auth import bearer
from tests.conftest import seed_sku
from tests.integration.buyer import buy_as_buyer, report
from tests.integration.test_edge_limits import ATTACKER, OTHER, metric, raw, refusals, session
from tests.integration.test_ingest_flow import Client
from tests.util import eventually

STREAM_ADDRESSES = [f"127.0.0.{i}" for i in range(10, 20)]  # ten clients holding streams


async def open_raw_stream(settings, address: str, sku: str, version: str = "1.1"):
    """A SKU stream on a raw connection: (reader, writer) once its head has arrived."""
    reader, writer = await raw(settings, address)
    writer.write(f"GET /v1/skus/{sku}/events HTTP/{version}\r\nHost: ingest\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    return head, reader, writer


async def test_sku_streams_count_against_the_clients_wait_budget(system, settings):
    s = msgspec.structs.replace(settings, client_waits_max=3)
    await seed_sku(s, "tee", stock=5)
    system.start_ingest(s)  # no committers: a purchase stays pending
    base = system.base_url
    async with session(ATTACKER, limit=0) as attacker, session(OTHER) as other, \
            session("127.0.0.1") as ops:
        limits = await metric(ops, s, "flashsale_ingest_edge_limit")
        assert limits['{limit="sku_streams_max"}'] <= limits['{limit="waits_max"}']
        url = f"{base}/v1/skus/tee/events"
        held = [await attacker.get(url) for _ in range(3)]
        assert [r.status for r in held] == [200, 200, 200]
        async with attacker.get(url) as r:
            problem = await r.json(content_type=None)
            assert r.status == 429 and problem["type"].endswith("/too_many_waits"), problem
            assert int(r.headers["Retry-After"]) >= 1
        # A long-poll of the same address shares the budget.
        async with attacker.post(f"{base}/v1/purchases", json={"sku": "tee", "qty": 1},
                                 headers={**bearer("mallory"), "Prefer": "wait=2"}) as r:
            assert r.status == 429, await r.text()
        async with other.get(url) as r:  # another client is served
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        held[0].close()

        async def place_given_back() -> bool:
            async with attacker.get(url, timeout=None) as r:
                return r.status == 200

        await eventually(place_given_back, timeout_s=10)
        for r in held[1:]:
            r.close()
        samples = await metric(ops, s, "flashsale_ingest_edge_refusals_total")
    assert refusals(samples, "waits_client") >= 2


async def test_both_framings_carry_the_feeds_updates(system, settings):
    system.start()
    async with session("127.0.0.1") as http:
        c = Client(http, system.base_url, settings.admin_token)
        assert (await c.put_sku("drop", stock=10, price_cents=0, payment="none"))[0] == 200
        streams = [await open_raw_stream(settings, OTHER, "drop", v) for v in ("1.1", "1.0")]
        for head, _, _ in streams:
            assert head.startswith(b"HTTP/1.") and b" 200 OK" in head.split(b"\r\n")[0]
        assert b"transfer-encoding: chunked" in streams[0][0].lower()
        assert b"transfer-encoding" not in streams[1][0].lower()
        _, _, p = await c.buy("drop", "alice", "k1")
        assert p["status"] == "confirmed"
        for head, reader, writer in streams:
            got = b""
            async with asyncio.timeout(20):
                while b'"remaining":9' not in got:
                    got += await reader.read(4096)
            assert got.count(b'"remaining":10') == 1  # the first event, then the update
            if b"chunked" in head.lower():
                # Each message is one chunk: its size line, then exactly that many bytes.
                size_line, _, rest = got.partition(b"\r\n")
                assert rest[: int(size_line, 16) + 2].endswith(b"\n\n\r\n")
            writer.close()


async def test_two_thousand_idle_streams_leave_the_buyer_served(system, settings):
    """The fan-out measurement: ten addresses hold 200 SKU streams each on the SKU the buyer
    buys (every purchase changes it, so every tick writes to all 2,000), never reading."""
    system.start()
    base = system.base_url
    async with session("127.0.0.1") as ops:
        c = Client(ops, base, settings.admin_token)
        assert (await c.put_sku("hot", stock=100_000, price_cents=0, payment="none"))[0] == 200
        baseline = await buy_as_buyer(base, settings.admin_token, "hot", 100, "calm")
        streams = []
        for address in STREAM_ADDRESSES:
            streams += await asyncio.gather(*(open_raw_stream(settings, address, "hot")
                                              for _ in range(200)))
        gauge = await metric(ops, settings, "flashsale_ingest_event_streams")
        held = await buy_as_buyer(base, settings.admin_token, "hot", 100, "busy")
        gauge_after = await metric(ops, settings, "flashsale_ingest_event_streams")
        cpu = await metric(ops, settings, "process_cpu_seconds_total")
        for _, _, writer in streams:
            writer.close()
    report("SKU streams", baseline, **{"2000 idle SKU streams on the bought SKU": held})
    print(f"streams open: {gauge}, after buying: {gauge_after}; ingest cpu {cpu}")
    assert baseline.all_confirmed and held.all_confirmed, held.outcomes
    assert gauge['{kind="sku"}'] == gauge_after['{kind="sku"}'] == 2000
