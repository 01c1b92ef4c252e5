"""A pending purchase knows its place: with the shard's writer held back (SIGSTOP), purchases
queue up and read exact positions, on every ingest instance; they only ever count down."""

from __future__ import annotations

import os
import signal

import aiohttp
import msgspec

from flashsale.ports import free_port
from proto.sharding import shard_of
from tests.integration.test_ingest_flow import Client

BUYERS = 6


async def test_positions_are_exact_and_count_down(system, settings, db):
    system.start()
    other = msgspec.structs.replace(settings, ingest_port=free_port(), ingest_metrics_port=free_port())
    system.start_ingest(settings=other, name="ingest-2")
    shard = shard_of("hot", settings.shards)
    writer = system.processes[f"committer-{shard}"]
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, settings.admin_token)
        c2 = Client(http, f"http://127.0.0.1:{other.ingest_port}", settings.admin_token)
        assert (await c.put_sku("hot", stock=100))[0] == 200
        assert writer.proc is not None
        os.kill(writer.proc.pid, signal.SIGSTOP)
        try:
            ids = []
            for i in range(BUYERS):
                status, _, p = await c.buy("hot", f"buyer-{i}", "k1", wait_s=None)
                assert status == 202 and p["status"] == "pending", p
                ids.append(p["id"])
            for client in (c, c2):  # the second instance never saw the POSTs
                positions = []
                for i, pid in enumerate(ids):
                    status, _, p = await client.call("GET", f"/v1/purchases/{pid}", user=f"buyer-{i}")
                    assert status == 200 and p["status"] == "pending", p
                    positions.append(p["queue"]["position"])
                assert positions == list(range(BUYERS)), positions
        finally:
            os.kill(writer.proc.pid, signal.SIGCONT)
        seen: dict[str, list[int]] = {pid: [] for pid in ids}
        for _ in range(50):
            pending = 0
            for i, pid in enumerate(ids):
                _, _, p = await c.call("GET", f"/v1/purchases/{pid}?wait=0.1", user=f"buyer-{i}")
                if p["status"] == "pending":
                    pending += 1
                    seen[pid].append(p["queue"]["position"])
                else:
                    assert p["queue"] is None and p["status"] == "confirmed", p
            if not pending:
                break
        for positions in seen.values():
            assert positions == sorted(positions, reverse=True), positions  # never up
    assert await db.fetchval("SELECT count(*) FROM purchases WHERE status = 'confirmed'") == BUYERS
