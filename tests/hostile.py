"""Hostile buyers mixed into the floods of the fault scenarios (tests/flood.py's `post_all`).

While the crowd buys, a few buyers send what an app never should: one key with SKUs of two
shards (both orders, waiting or not; through the instance that saw the first, or stored
straight on the other shard's stream as an instance that never saw it would), a retry with
another body, cancels of other buyers' purchases and of their own decided ones, purchases of
SKUs that do not exist. Every answer
must be one a client can act on (never a 5xx but 503), and afterwards `check` asserts that
their purchases settled like any other and that every shard still decides a fresh purchase
within a few seconds: no request stops, stalls or loops a writer.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import nats

from config.settings import Settings
from flashsale.jetstream import nats_servers
from proto.clock import now_ms
from proto.messages import Purchase, encode
from proto.sharding import shard_of
from tests.auth import TEST_ADMIN_TOKEN, bearer, pid
from tests.history import wait_settled

# What a hostile request may get: served, accepted, not yours, refused, invalid, slowed down.
ANSWERS = frozenset({200, 202, 404, 409, 422, 429, 503})
DECIDES_WITHIN_S = 10.0  # a fresh purchase per shard, after the scenario (a slow, shared box)
PAUSE_S = 0.02  # between one hostile buyer's requests


@dataclass
class Hostile:
    settings: Settings
    buyers: int = 4
    seed: int = 11
    admin_token: str = TEST_ADMIN_TOKEN
    base_url: str = ""
    skus: dict[int, str] = field(default_factory=dict)  # shard -> the hostile buyers' SKU
    answers: Counter[str] = field(default_factory=Counter)  # "<action> <status>"
    accepted: set[str] = field(default_factory=set)  # purchase ids answered 200 or 202
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def shards(self) -> int:
        return self.settings.shards

    async def setup(self, http: aiohttp.ClientSession, base_url: str) -> None:
        """One SKU per shard, plenty of stock, no payment."""
        self.base_url = base_url
        for shard in range(self.shards):
            name = next(f"hostile-{i}" for i in range(1000) if shard_of(f"hostile-{i}", self.shards) == shard)
            self.skus[shard] = name
            async with http.put(f"{base_url}/v1/admin/skus/{name}", json={"stock": 100_000},
                                headers={"Authorization": f"Bearer {self.admin_token}"}) as r:
                assert r.status == 200, await r.text()

    async def run(self, victims: list[str]) -> None:
        """Until `stopping` is set: each hostile buyer in a loop of hostile requests. `victims`
        are other buyers' purchase ids."""
        nc = await nats.connect(servers=nats_servers(self.settings.nats_url))
        try:
            async with aiohttp.ClientSession() as http:
                await asyncio.gather(*(self._buyer(http, nc, n, victims) for n in range(self.buyers)))
        finally:
            await nc.close()

    async def _buyer(self, http: aiohttp.ClientSession, nc: nats.NATS, n: int,
                     victims: list[str]) -> None:
        rng = random.Random(self.seed * 1000 + n)
        user = f"mallory-{n}"
        own: list[str] = []
        i = 0
        while not self.stopping.is_set():
            i += 1
            key = f"{user}-k{i}"
            action = rng.choice(("twin", "twin_elsewhere", "body", "cancel_other", "cancel_own",
                                 "unknown_sku"))
            if action == "twin_elsewhere" and self.shards > 1:
                # The second body stored on the other shard as by an instance that never saw
                # the first: only the writers can tell them apart.
                first, second = rng.sample(sorted(self.skus), 2)
                await self._buy(http, action, user, key, self.skus[first], wait=False)
                await self._store_elsewhere(nc, user, key, self.skus[second])
                own.append(pid(user, key))
            elif action == "twin" and self.shards > 1:
                # One key, SKUs of two shards, either order, the second waiting or not.
                first, second = rng.sample(sorted(self.skus), 2)
                await self._buy(http, action, user, key, self.skus[first], wait=False)
                await self._buy(http, action, user, key, self.skus[second], wait=rng.random() < 0.5)
                own.append(pid(user, key))
            elif action == "body":
                sku = self.skus[rng.randrange(self.shards)]
                await self._buy(http, action, user, key, sku, wait=False)
                await self._buy(http, action, user, key, sku, wait=False, qty=2)  # "a retry"
                own.append(pid(user, key))
            elif action == "cancel_other" and victims:
                await self._cancel(http, action, user, rng.choice(victims))
            elif action == "cancel_own" and own:
                await self._cancel(http, action, user, rng.choice(own))
            else:
                await self._buy(http, "unknown_sku", user, key, f"no-such-sku-{i}", wait=False)
            await asyncio.sleep(PAUSE_S)

    async def _buy(self, http: aiohttp.ClientSession, action: str, user: str, key: str, sku: str,
                   wait: bool, qty: int = 1) -> None:
        headers = {"Idempotency-Key": key, **bearer(user)}
        if wait:
            headers["Prefer"] = "wait=1"
        status = await self._send(http, "POST", "/v1/purchases", headers, {"sku": sku, "qty": qty})
        self.answers[f"{action} {status}"] += 1
        if status in (200, 202):
            self.accepted.add(pid(user, key))

    async def _store_elsewhere(self, nc: nats.NATS, user: str, key: str, sku: str) -> None:
        names = self.settings.names
        shard = shard_of(sku, self.shards)
        twin = Purchase(id=pid(user, key), sku=sku, qty=1, user_id=user,
                        request_hash=f"elsewhere-{key}", accepted_at_ms=now_ms())
        try:
            await nc.jetstream().publish(names.intent(shard, "purchase", twin.id), encode(twin))
        except (TimeoutError, nats.errors.Error):
            self.answers["twin_elsewhere not stored"] += 1
            return
        self.answers["twin_elsewhere stored"] += 1
        self.accepted.add(twin.id)

    async def _cancel(self, http: aiohttp.ClientSession, action: str, user: str, purchase_id: str) -> None:
        status = await self._send(http, "POST", f"/v1/purchases/{purchase_id}/cancel", bearer(user), None)
        self.answers[f"{action} {status}"] += 1

    async def _send(self, http: aiohttp.ClientSession, method: str, path: str,
                    headers: dict[str, str], body: dict | None) -> int:
        try:
            async with http.request(method, self.base_url + path, json=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=30)) as r:
                await r.read()
                status = r.status
        except (TimeoutError, aiohttp.ClientError):
            return -1  # a fault scenario may take the server away for a moment
        assert status in ANSWERS, f"{method} {path}: {status}"
        if status in (429, 503):
            await asyncio.sleep(0.2)
        return status

    async def check(self, db: asyncpg.Connection) -> dict[str, object]:
        """Their purchases settled like any other (one row each), and every shard decides."""
        if self.accepted:
            rows = await wait_settled(db, self.accepted)
            assert {d.sku for d in rows.values()} <= set(self.skus.values()), rows
        await every_shard_decides(self.base_url, self.skus)
        twins = sum(n for a, n in self.answers.items() if a.startswith("twin_elsewhere stored"))
        assert self.shards == 1 or twins > 0, self.answers
        return {"hostile_accepted": len(self.accepted), "answers": dict(sorted(self.answers.items()))}


async def every_shard_decides(base_url: str, skus: dict[int, str],
                              within_s: float = DECIDES_WITHIN_S) -> None:
    """A fresh purchase of another buyer on each shard is decided within `within_s` (asked
    again with the same key while the answer is 202, 429 or 503)."""
    async with aiohttp.ClientSession() as http:
        for shard, sku in skus.items():
            key = f"probe-{time.monotonic_ns()}"
            started = time.monotonic()
            status, body = 0, {}
            while (left_s := within_s - (time.monotonic() - started)) > 0:
                headers = {"Idempotency-Key": key, "Prefer": f"wait={max(1, int(left_s))}",
                           **bearer("probe")}
                async with http.post(f"{base_url}/v1/purchases", json={"sku": sku, "qty": 1},
                                     headers=headers) as r:
                    status, body = r.status, await r.json(content_type=None)
                if status == 200:
                    break
                await asyncio.sleep(0.1)
            assert status == 200 and body["status"] == "confirmed", (
                f"shard {shard} decided no fresh purchase within {within_s} s: {status} {body}")


async def still_deciding(base_url: str, settings: Settings) -> None:
    """The end of every fault scenario: each shard decides a fresh purchase within a few
    seconds (on a SKU of its own, created now)."""
    probe = Hostile(settings)
    async with aiohttp.ClientSession() as http:
        await probe.setup(http, base_url)
    await every_shard_decides(base_url, probe.skus)
