"""Chaos testing's faults at the worst moments of a commit, around a writer's ShardRows.

The chaos tests ask for them through settings (`crash_after_commit`, `fail_after_commit`), and
the committer's entry point wraps the writer's rows in `FaultyRows` only then: the writer's own
commit path has no fault branches.
"""

from __future__ import annotations

import logging
import os

import asyncpg

from committer.shard_rows import ShardRows
from committer.step import Step
from config.settings import Settings
from flashsale.logs import kv
from proto.messages import Decision, Purchase

log = logging.getLogger("committer")

EXIT_KILLED = 137  # what a process killed by SIGKILL reports (128 + 9)


class FaultyRows:
    """ShardRows that, after the `crash_after`-th commit with writes, die as after kill -9
    (committed, nothing acked or announced), and after every `fail_every`-th, fail as asyncpg
    did when Postgres was killed mid-COMMIT (committed, but the client cannot tell). 0: never."""

    def __init__(self, inner: ShardRows, crash_after: int, fail_every: int) -> None:
        self.inner = inner
        self.crash_after = crash_after
        self.fail_every = fail_every
        self.commits = 0  # commits with writes so far

    async def commit(self, step: Step, now_ms: int, stored_at: dict[str, int]) -> None:
        await self.inner.commit(step, now_ms, stored_at)
        if not step.has_writes:
            return
        self.commits += 1
        if self.commits == self.crash_after:
            os._exit(EXIT_KILLED)
        if self.fail_every and self.commits % self.fail_every == 0:
            raise asyncpg.InternalClientError("cannot switch to state 15 (chaos: fail_after_commit)")

    async def lookup(self, ids: list[str]) -> list[Decision | Purchase]:
        return await self.inner.lookup(ids)

    async def renew_lease(self) -> None:
        await self.inner.renew_lease()

    async def intent_seqs(self, ids: list[str]) -> dict[str, int]:
        return await self.inner.intent_seqs(ids)


def with_faults(settings: Settings, rows: ShardRows) -> ShardRows:
    """`rows`, wrapped in the faults the settings ask for (none in production)."""
    if not (settings.crash_after_commit or settings.fail_after_commit):
        return rows
    log.warning("chaos faults installed", extra=kv(crash_after_commit=settings.crash_after_commit,
                                                   fail_after_commit=settings.fail_after_commit))
    return FaultyRows(rows, settings.crash_after_commit, settings.fail_after_commit)
