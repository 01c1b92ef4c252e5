"""A paused nats-server (SIGSTOP: the connection stays up, nothing answers) never makes a
request hang: purchases, queued behind a batch waiting for its ack or not, and reads that need
JetStream (a purchase this instance has not read in the intents streams: its barrier) are
answered 503 + Retry-After within PUBLISH_TIMEOUT_S of reaching the publisher; a pending purchase
the instance has read is answered from memory. The test pauses a nats-server of its own."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import msgspec

from ingest.publisher import PUBLISH_TIMEOUT_S, SWEEP_EVERY_S
from launch.nats_server import start_nats
from tests.auth import bearer
from tests.auth import pid as purchase_id
from tests.conftest import seed_sku

PROBLEM = "application/problem+json"
# What the machine may add to the bound (a loaded CI box): far below a second timeout.
SLACK_S = 2.0


async def _timed(http: aiohttp.ClientSession, method: str, url: str, **kwargs,
                 ) -> tuple[int, str | None, float]:
    started = time.monotonic()
    async with http.request(method, url, **kwargs) as r:
        await r.read()
        return r.status, r.headers.get("Retry-After"), time.monotonic() - started


async def test_a_paused_nats_is_a_bounded_503(system, settings, tmp_path: Path):
    nats = start_nats(tmp_path / "nats")
    try:
        s = msgspec.structs.replace(settings, nats_url=nats.url, ingest_batches_inflight_max=1)
        system.settings = s
        await seed_sku(s, "tee", stock=1000)
        system.start_ingest()  # no committers: purchases stay pending, read from the stream
        base = system.base_url
        async with aiohttp.ClientSession() as http:
            headers = {**bearer("alice"), "Idempotency-Key": "before"}
            async with http.post(f"{base}/v1/purchases", json={"sku": "tee", "qty": 1}, headers=headers) as r:
                assert r.status == 202
                pending = (await r.json())["id"]
            nats.proc.send_signal(signal.SIGSTOP)
            try:
                buys = [_timed(http, "POST", f"{base}/v1/purchases", json={"sku": "tee", "qty": 1},
                               headers={**bearer(f"b{n}"), "Idempotency-Key": "k"}) for n in range(60)]
                unknown = purchase_id("alice", "never-stored")
                reads = [_timed(http, "GET", f"{base}/v1/purchases/{unknown}", headers=bearer("alice"))
                         for _ in range(10)]
                known = [_timed(http, "GET", f"{base}/v1/purchases/{pending}", headers=bearer("alice"))
                         for _ in range(10)]
                answers = await asyncio.gather(*buys, *reads)
                from_memory = await asyncio.gather(*known)
            finally:
                nats.proc.send_signal(signal.SIGCONT)
            assert {status for status, _, _ in from_memory} == {200}, from_memory
            bound_s = PUBLISH_TIMEOUT_S + SWEEP_EVERY_S
            slowest = max(elapsed for _, _, elapsed in answers)
            print(f"{len(answers)} requests with nats-server paused: statuses "
                  f"{sorted({status for status, _, _ in answers})}, slowest {slowest:.2f} s "
                  f"(bound {bound_s:.2f} s)")
            assert {status for status, _, _ in answers} == {503}, answers
            assert all(retry_after for _, retry_after, _ in answers)
            assert slowest < bound_s + SLACK_S, answers
            # Back: the same clicks go through (the same keys: safe whatever was stored).
            status, _, _ = await _timed(http, "POST", f"{base}/v1/purchases", json={"sku": "tee", "qty": 1},
                                        headers={**bearer("b0"), "Idempotency-Key": "k"})
            assert status == 202
    finally:
        nats.stop()
