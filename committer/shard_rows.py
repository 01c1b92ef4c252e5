"""The writer's Postgres side while it holds its shard's lease: the few queries its loop makes.

`ShardRows` is what the loop (committer/writer.py) needs of Postgres; `PostgresShardRows` answers
it from committer/store.py for one shard and epoch. The loop's unit tests answer it from memory,
and chaos testing wraps it (committer/faults.py).
"""

from __future__ import annotations

from typing import Protocol

import asyncpg

from committer import store
from committer.step import Step
from proto.messages import Decision, Purchase


class ShardRows(Protocol):
    async def lookup(self, ids: list[str]) -> list[Decision | Purchase]:
        """What Postgres holds of these purchase ids (store.lookup)."""

    async def commit(self, step: Step, now_ms: int, stored_at: dict[str, int]) -> None:
        """The step in one transaction that proves and renews the lease (store.commit)."""

    async def renew_lease(self) -> None:
        """Prove the lease is still ours and extend it; else raise store.Fenced."""

    async def intent_seqs(self, ids: list[str]) -> dict[str, int]:
        """Purchase id -> the intents stream sequence of the message holding its intent."""


class PostgresShardRows:
    """ShardRows of `shard` in Postgres, written under the lease of `epoch`."""

    def __init__(self, conn: asyncpg.Connection, shard: int, epoch: int, ttl_ms: int) -> None:
        self.conn = conn
        self.shard = shard
        self.epoch = epoch
        self.ttl_ms = ttl_ms

    async def lookup(self, ids: list[str]) -> list[Decision | Purchase]:
        return await store.lookup(self.conn, ids)

    async def commit(self, step: Step, now_ms: int, stored_at: dict[str, int]) -> None:
        await store.commit(self.conn, self.shard, self.epoch, self.ttl_ms, step, now_ms, stored_at)

    async def renew_lease(self) -> None:
        await store.renew_lease(self.conn, self.shard, self.epoch, self.ttl_ms)

    async def intent_seqs(self, ids: list[str]) -> dict[str, int]:
        return await store.intent_seqs(self.conn, ids)
