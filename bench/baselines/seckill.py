"""The `redis` baseline's store, the way seckill ("flash kill") systems are usually built.

One Lua script, atomic inside Redis, decides a purchase: a repeat of a known order id answers
that order again (idempotency); a buyer already in the SKU's buyer set is refused (one
purchase per buyer and SKU); otherwise the stock counter is checked and decremented, the buyer
added to the set and the order appended to a stream. A worker process (`seckill_worker`) reads
the stream through a consumer group and writes the orders to Postgres in batches; it acks them
only after its transaction committed, and the order id is the primary key, so a redelivery never
writes an order twice.

Durability is Redis's AOF: with `appendfsync always` Redis fsyncs the AOF before it sends the
replies of an event-loop turn (all the turn's commands share one fsync); with `everysec` a
background thread fsyncs once a second, so a power failure loses up to ~1 s of orders that were
already answered.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import redis.asyncio as aioredis

Outcome = Literal["confirmed", "sold_out", "limit_exceeded"]
OUTCOMES: frozenset[Any] = frozenset(get_args(Outcome))
STREAM = "bench:orders"  # the order stream the worker drains
GROUP = "pg-writer"  # the worker's consumer group
ORDERS = "bench:order-status"  # order id -> outcome (idempotency, GET)

# KEYS: stock, buyers, orders hash, stream. ARGV: order id, buyer, qty, sku, accepted_at_ms.
# Returns the outcome as a string.
PURCHASE_LUA = """
local known = redis.call('HGET', KEYS[3], ARGV[1])
if known then return known end
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then return 'limit_exceeded' end
local qty = tonumber(ARGV[3])
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
if left < qty then return 'sold_out' end
redis.call('DECRBY', KEYS[1], qty)
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], 'confirmed')
redis.call('XADD', KEYS[4], '*', 'id', ARGV[1], 'user', ARGV[2], 'qty', ARGV[3], 'sku', ARGV[4],
           'at', ARGV[5])
return 'confirmed'
"""


def stock_key(sku: str) -> str:
    return f"bench:stock:{sku}"


def buyers_key(sku: str) -> str:
    return f"bench:buyers:{sku}"


class Seckill:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._purchase = client.register_script(PURCHASE_LUA)

    @classmethod
    def connect(cls, url: str, connections_max: int = 64) -> Seckill:
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=connections_max,
                                                        decode_responses=True)
        return cls(aioredis.Redis(connection_pool=pool))

    async def close(self) -> None:
        await self.client.aclose()

    async def purchase(self, order_id: str, buyer: str, sku: str, qty: int, accepted_at_ms: int) -> Outcome:
        got = await self._purchase(keys=[stock_key(sku), buyers_key(sku), ORDERS, STREAM],
                                   args=[order_id, buyer, qty, sku, accepted_at_ms])
        if got not in OUTCOMES:
            raise RuntimeError(f"purchase script answered {got!r}")
        outcome: Outcome = got
        return outcome

    async def status(self, order_id: str) -> str | None:
        got = await self.client.hget(ORDERS, order_id)
        return None if got is None else str(got)

    async def seed(self, stock_by_sku: dict[str, int]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for sku, stock in stock_by_sku.items():
                pipe.set(stock_key(sku), stock)
            await pipe.execute()

    async def ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except aioredis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def backlog(self) -> int:
        """Orders not yet written to Postgres: the group's unread entries plus unacked ones."""
        groups: list[dict[str, Any]] = await self.client.xinfo_groups(STREAM)
        for g in groups:
            if g["name"] == GROUP:
                lag = g.get("lag")
                return int(g["pending"]) + int(lag if lag is not None else await self.client.xlen(STREAM))
        return int(await self.client.xlen(STREAM))

    async def accepted(self) -> int:
        return int(await self.client.hlen(ORDERS))
