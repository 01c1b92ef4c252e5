"""The process-wide connection cap under idle connections from many addresses, against a real
ingest with a small fd limit: ten addresses holding kept-alive connections up to the cap do not
lock a normal buyer out; idle connections make room (the busiest address's first), a request
in flight is never cut. The buyer's latency is reported beside its latency without them."""

from __future__ import annotations

import asyncio

import msgspec

from tests.auth import token
from tests.integration.buyer import buy_as_buyer, report
from tests.integration.test_edge_limits import (
    BUYER,
    closed_by_server,
    healthz_on,
    metric,
    raw,
    refusals,
    session,
    start_limited_ingest,
)
from tests.integration.test_ingest_flow import Client
from tests.util import eventually

HOLDERS = [f"127.0.0.{i}" for i in range(10, 20)]


async def test_idle_connections_from_ten_addresses_do_not_lock_a_buyer_out(system, settings):
    # Kept-alive connections stay for the whole test without pings (a client need not ping).
    s = msgspec.structs.replace(settings, idle_timeout_s=120.0)
    system.settings = s
    system.start(ingest=False)
    start_limited_ingest(system, s, soft=1024, hard=1024)
    base = system.base_url
    async with session("127.0.0.1") as ops:
        limits = await metric(ops, s, "flashsale_ingest_edge_limit")
        connections_max = int(limits['{limit="connections_max"}'])
        assert (await Client(ops, base, s.admin_token).put_sku(
            "hot", stock=100_000, price_cents=0, payment="none"))[0] == 200
    baseline = await buy_as_buyer(base, s.admin_token, "hot", 40, "calm", new_connections=True)

    # Ten addresses fill the process: each connection sends one request, then idles.
    per_address = connections_max // len(HOLDERS) + 2
    held = []

    async def hold(address: str) -> None:
        for _ in range(per_address):
            try:
                reader, writer = await raw(s, address)
                assert await healthz_on(reader, writer) == b"HTTP/1.1 200 OK"
            except (ConnectionError, asyncio.IncompleteReadError):
                continue  # made room for a later one: closed before it was asked
            held.append((reader, writer))

    await asyncio.gather(*(hold(a) for a in HOLDERS))
    async with session("127.0.0.1") as ops:
        open_now = (await metric(ops, s, "flashsale_ingest_connections"))[""]
    under = await buy_as_buyer(base, s.admin_token, "hot", 40, "full", new_connections=True)
    still_open = sum(1 for reader, _ in held if not reader.at_eof())
    async with session("127.0.0.1") as ops:
        samples = await metric(ops, s, "flashsale_ingest_edge_refusals_total")
    for _, writer in held:
        writer.close()
    report("connections", baseline, **{
        f"{len(HOLDERS)} addresses x {per_address} idle kept-alive connections "
        f"(connections_max {connections_max})": under})
    print(f"open connections when full: {open_now:g}; held connections still open after the "
          f"buyer's: {still_open}; refusals {samples}")
    assert baseline.all_confirmed and under.all_confirmed, under.outcomes
    assert open_now <= connections_max
    assert refusals(samples, "connection_evicted") >= len(HOLDERS) * per_address - connections_max
    assert refusals(samples, "connections_total") == 0  # nobody was refused: idle ones made room


async def test_a_request_in_flight_is_never_closed_to_make_room(system, settings):
    """At the cap with nothing idle (every connection is sending a request body, slowly), a new
    connection is refused rather than a request cut."""
    s = msgspec.structs.replace(settings, idle_timeout_s=120.0, body_timeout_s=120.0)
    start_limited_ingest(system, s, soft=1024, hard=1024)
    async with session("127.0.0.1") as ops:
        limits = await metric(ops, s, "flashsale_ingest_edge_limit")
    connections_max = int(limits['{limit="connections_max"}'])
    head = (b"POST /v1/purchases HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + token("slow").encode() + b"\r\nContent-Length: 100\r\n\r\n{")
    held = []
    for n in range(connections_max):
        reader, writer = await raw(s, HOLDERS[n % len(HOLDERS)])
        writer.write(head)
        held.append((reader, writer))
    await asyncio.gather(*(w.drain() for _, w in held))

    async def all_in_flight() -> bool:
        async with session("127.0.0.1") as ops:
            return (await metric(ops, s, "flashsale_ingest_connections"))[""] >= connections_max

    await eventually(all_in_flight, timeout_s=20)
    refused = 0
    for _ in range(5):
        try:
            reader, writer = await raw(s, BUYER)
            refused += await closed_by_server(reader, 5.0) == "reset"
            writer.close()
        except ConnectionResetError:
            refused += 1
    cut = sum(1 for reader, _ in held if reader.at_eof())
    async with session("127.0.0.1") as ops:
        samples = await metric(ops, s, "flashsale_ingest_edge_refusals_total")
    for _, writer in held:
        writer.close()
    print(f"\n{connections_max} requests in flight: {refused} of 5 new connections refused, {cut} "
          f"requests cut; refusals {samples}")
    assert refused == 5 and cut == 0
    assert refusals(samples, "connection_evicted") == 0
