"""The baselines flashsale is compared with, behind the same HTTP API (the parts the bench uses).

- echo:    reads the request and answers 202 without doing anything: the HTTP limit of the box.
- naive:   per request, one transaction: conditional `UPDATE ... SET sold = sold + qty WHERE
           stock - sold >= qty` plus an order INSERT. What most shops write first.
- rowlock: per request, one transaction: `SELECT ... FOR UPDATE`, then UPDATE and INSERT.
- redis:   the seckill way (seckill.py): one Redis Lua script checks and decrements the stock,
           keeps a per-SKU buyer set and appends the order to a stream, answered 202 when the
           script returns (after Redis's AOF fsync with `appendfsync always`); a worker process
           (seckill_worker.py) writes the stream to Postgres in batches.

Every baseline but echo verifies the buyer's JWT exactly as ingest does (ingest.auth.BuyerVerifier
with the same settings, so the same cache of verified tokens): the buyer is the token's `sub`, a
body `user_id` must be absent or equal to it. echo reads the request (Authorization header
included) and does nothing: the HTTP limit.

naive and rowlock decide synchronously, so their POST answers 200 with the decided state (what
flashsale answers to `Prefer: wait=N`). They use their own database and tables (`bench_skus`,
`bench_orders`) on the same PostgreSQL server as flashsale, with the same durable settings
(fsync=on, synchronous_commit=on): every 200 is a committed, fsynced transaction.

An order id is derived from (buyer, Idempotency-Key) exactly as flashsale does, and is the primary
key, so a retry never creates a second order: the INSERT conflicts and the transaction (with its
stock change) is rolled back, and the existing order is answered.
"""

from __future__ import annotations

import argparse
from typing import Literal

import asyncpg
import msgspec
import uvloop
from aiohttp import web

from bench.baselines.seckill import Seckill
from config.settings import load
from ingest import problems
from ingest.auth import BuyerVerifier
from proto.clock import now_ms
from proto.ids import id_key, new_idempotency_key, purchase_id

Kind = Literal["echo", "naive", "rowlock", "redis"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_skus (
    sku   text PRIMARY KEY,
    stock integer NOT NULL CHECK (stock >= 0),
    sold  integer NOT NULL DEFAULT 0 CHECK (sold >= 0)
);
CREATE TABLE IF NOT EXISTS bench_orders (
    id             text PRIMARY KEY,
    sku            text    NOT NULL,
    user_id        text    NOT NULL,
    qty            integer NOT NULL,
    status         text    NOT NULL,
    reason         text,
    accepted_at_ms bigint  NOT NULL,
    decided_at_ms  bigint  NOT NULL
);
"""
# No CHECK (sold <= stock) on purpose: the baselines must be correct by their own logic, and the
# bench's oversell check is what shows whether they are.

POOL_MAX = 20  # bounded: 2 cores cannot use more concurrent transactions than this anyway


class PurchaseBody(msgspec.Struct):
    sku: str
    qty: int
    user_id: str | None = None  # absent, or the token's `sub`


class SkuBody(msgspec.Struct):
    stock: int


class Order(msgspec.Struct):
    id: str
    status: str
    reason: str | None = None


_decode_purchase = msgspec.json.Decoder(PurchaseBody).decode
_decode_sku = msgspec.json.Decoder(SkuBody).decode
_encode = msgspec.json.Encoder().encode
_ECHO_BODY = _encode(Order("p_echo", "pending"))


class _Duplicate(Exception):
    """The order id exists: roll the whole transaction back and answer the existing order."""


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _problem(status: int, title: str) -> web.Response:
    return web.Response(
        body=_encode({"type": "about:blank", "title": title, "status": status}),
        status=status, content_type="application/problem+json",
    )


class Baseline:
    def __init__(self, kind: Kind, pool: asyncpg.Pool | None, seckill: Seckill | None,
                 buyers: BuyerVerifier | None, id_secret: bytes) -> None:
        self.kind = kind
        self.pool = pool  # naive, rowlock
        self.seckill = seckill  # redis
        self.buyers = buyers  # None for echo, which verifies nothing
        self.id_key = id_secret
        self.handled = 0  # requests answered, for the bench's live progress line

    async def stop(self, app: web.Application) -> None:
        if self.pool is not None:
            await self.pool.close()
        if self.seckill is not None:
            await self.seckill.close()

    async def post_purchase(self, request: web.Request) -> web.Response:
        self.handled += 1
        raw = await request.read()
        if self.kind == "echo":
            return _json(_ECHO_BODY, 202)
        assert self.buyers is not None
        try:
            buyer = self.buyers.buyer(request)
        except problems.Rejection as r:
            return r.response()
        try:
            body = _decode_purchase(raw)
        except msgspec.ValidationError as e:
            return _problem(400, str(e))
        if body.qty < 1:
            return _problem(400, "qty must be >= 1")
        if body.user_id is not None and body.user_id != buyer:
            return _problem(403, "user_id in the body differs from the authenticated buyer")
        key = request.headers.get("Idempotency-Key") or new_idempotency_key()
        pid = purchase_id(self.id_key, buyer, key)
        accepted = now_ms()
        if self.seckill is not None:
            outcome = await self.seckill.purchase(pid, buyer, body.sku, body.qty, accepted)
            if outcome != "confirmed":
                return _problem(409, outcome)  # like flashsale's fast path: no purchase exists
            return _json(_encode(Order(pid, "confirmed")), 202, {"Location": f"/v1/purchases/{pid}"})
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    if self.kind == "naive":
                        done = await conn.execute(
                            "UPDATE bench_skus SET sold = sold + $2 WHERE sku = $1 AND stock - sold >= $2",
                            body.sku, body.qty,
                        )
                        ok = done == "UPDATE 1"
                    else:
                        row = await conn.fetchrow(
                            "SELECT stock, sold FROM bench_skus WHERE sku = $1 FOR UPDATE", body.sku
                        )
                        ok = row is not None and row["stock"] - row["sold"] >= body.qty
                        if ok:
                            await conn.execute(
                                "UPDATE bench_skus SET sold = sold + $2 WHERE sku = $1", body.sku, body.qty
                            )
                    status, reason = ("confirmed", None) if ok else ("rejected", "sold_out")
                    inserted = await conn.fetchval(
                        "INSERT INTO bench_orders (id, sku, user_id, qty, status, reason, accepted_at_ms,"
                        " decided_at_ms) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT (id) DO NOTHING"
                        " RETURNING 1",
                        pid, body.sku, buyer, body.qty, status, reason, accepted, now_ms(),
                    )
                    if inserted is None:
                        raise _Duplicate
            except _Duplicate:
                row = await conn.fetchrow("SELECT status, reason FROM bench_orders WHERE id = $1", pid)
                if row is None:  # the insert conflicted on this id, so its row exists
                    raise RuntimeError(f"order {pid} vanished after a conflicting insert") from None
                status, reason = row["status"], row["reason"]
        return _json(_encode(Order(pid, status, reason)), 200, {"Location": f"/v1/purchases/{pid}"})

    async def get_purchase(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        if self.seckill is not None:
            status = await self.seckill.status(pid)
            return _json(_encode(Order(pid, status))) if status else _problem(404, "no such purchase")
        if self.pool is None:
            return _json(_encode(Order(pid, "pending")))
        row = await self.pool.fetchrow("SELECT status, reason FROM bench_orders WHERE id = $1", pid)
        if row is None:
            return _problem(404, "no such purchase")
        return _json(_encode(Order(pid, row["status"], row["reason"])))

    async def put_sku(self, request: web.Request) -> web.Response:
        # The baselines trust the bench: no admin token check (they only listen on loopback).
        body = _decode_sku(await request.read())
        if self.seckill is not None:
            await self.seckill.seed({request.match_info["sku"]: body.stock})
        if self.pool is not None:
            await self.pool.execute(
                "INSERT INTO bench_skus (sku, stock) VALUES ($1, $2)"
                " ON CONFLICT (sku) DO UPDATE SET stock = EXCLUDED.stock",
                request.match_info["sku"], body.stock,
            )
        return _json(b'{"ok":true}')

    async def ready(self, request: web.Request) -> web.Response:
        return _json(b'{"ready":true}')

    async def stats(self, request: web.Request) -> web.Response:
        return _json(_encode({"handled": self.handled}))


async def make_app(kind: Kind, database_url: str | None, redis_url: str | None = None) -> web.Application:
    pool = None
    seckill = None
    buyers = None
    # The same settings as the flashsale under test (the harness passes them in the environment).
    settings = load()
    if kind in ("naive", "rowlock"):
        if not database_url:
            raise SystemExit(f"{kind} needs --database-url")
        pool = await asyncpg.create_pool(database_url, min_size=POOL_MAX, max_size=POOL_MAX)
        async with pool.acquire() as conn:
            await conn.execute(SCHEMA)
    if kind == "redis":
        if not redis_url:
            raise SystemExit("redis needs --redis-url")
        seckill = Seckill.connect(redis_url, connections_max=POOL_MAX * 3)
        await seckill.ensure_group()
    if kind != "echo":
        buyers = BuyerVerifier.from_settings(settings)
    b = Baseline(kind, pool, seckill, buyers, id_key(settings.id_secret))
    app = web.Application(client_max_size=4096)
    app.on_cleanup.append(b.stop)
    app.router.add_post("/v1/purchases", b.post_purchase)
    app.router.add_get("/v1/purchases/{id}", b.get_purchase)
    app.router.add_put("/v1/admin/skus/{sku}", b.put_sku)
    app.router.add_get("/readyz", b.ready)
    app.router.add_get("/bench/stats", b.stats)
    return app


def main(kind: Kind) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m bench.baselines.{kind}")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    uvloop.install()
    web.run_app(
        make_app(kind, args.database_url, args.redis_url), host=args.host, port=args.port,
        access_log=None, print=None, backlog=4096,
    )
