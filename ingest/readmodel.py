"""Where ingest reads a purchase or a SKU: its cache of the result stream, then Postgres, then
(for a purchase not decided yet) what it followed of the intents streams. Every query ingest
makes is here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

import asyncpg
import msgspec

from committer.schema import PURCHASE_COLUMNS, SKU_COLUMNS, decision_of, sku_state_of
from flashsale.logs import kv
from ingest import problems
from ingest.follower import IntentsFollower
from ingest.ratelimit import RateLimiter
from ingest.results import SKUS_MAX, PurchaseState, ResultsHub
from proto.messages import Decision, Purchase, SkuState
from proto.subjects import Names

log = logging.getLogger("ingest.readmodel")

DB_TIMEOUT_S = 2.0
UNKNOWN_SKU_TTL_S = 1.0
UNKNOWN_SKUS_MAX = 10_000
MISS_CLIENTS_MAX = 100_000


class Reader(msgspec.Struct, frozen=True):
    """Who reads a purchase: a buyer (their own purchases) or the operator (every purchase)."""

    buyer: str | None = None  # None: the operator
    operator: bool = False

    def may_read(self, owner: str) -> bool:
        return self.operator or owner == self.buyer


OPERATOR = Reader(operator=True)


class ReadModel:
    def __init__(
        self, names: Names, shards: int, pool: asyncpg.Pool, follower: IntentsFollower,
        hub: ResultsHub, misses: RateLimiter | None,
    ) -> None:
        self.names = names
        self.shards = shards
        self.pool = pool
        self.follower = follower
        self.hub = hub
        # Lookups of things that do not exist, per client: each one costs Postgres (and, for a
        # purchase, the intent stream) a query, so a client gets only so many. A lookup spends
        # one before its first query and gives it back when it finds what it looked for, so
        # concurrent lookups cannot run past the budget.
        self.misses = misses
        # sku -> monotonic time the miss expires; least recently missed first.
        self._unknown_skus: OrderedDict[str, float] = OrderedDict()
        # Purchase ids for the next batched Postgres lookup, and whether one is out now.
        self._next_lookup: dict[str, asyncio.Future[Decision | None]] = {}
        # The SKUs with a purchase or draw entry in Postgres once the follower had started (None:
        # not known): every purchase of any other SKU is one the follower reads.
        self.skus_before_follower: frozenset[str] | None = None
        self._looking_up = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def load_skus(self) -> None:
        """Rejections carry no SKU state, so an instance started after a sell-out would never
        learn it from the stream: start from Postgres (after subscribing, so nothing newer is
        overwritten)."""
        rows = await self.pool.fetch(
            f"SELECT {SKU_COLUMNS} FROM skus ORDER BY sku LIMIT $1", SKUS_MAX, timeout=DB_TIMEOUT_S
        )
        for row in rows:
            self.hub.remember_sku(sku_state_of(row))

    async def stored_intent(self, shard: int, pid: str, request_hash: str) -> Purchase | None:
        """The purchase's intent with this body if it is stored and not decided yet (or its
        decision has not reached this instance yet). Without a barrier when the follower already
        read it; else after one on `shard`, so an intent acknowledged anywhere before is found."""
        intent = self.hub.queues.pending(pid, request_hash)
        if intent is None:
            await self.follower.barrier(shard)
            intent = self.hub.queues.pending(pid, request_hash)
        return intent

    async def purchase_from_db(self, pid: str) -> Decision | None:
        row = await self.pool.fetchrow(
            f"SELECT {PURCHASE_COLUMNS} FROM purchases WHERE id = $1", pid, timeout=DB_TIMEOUT_S
        )
        if row is None:
            return None
        d = decision_of(row)
        self.hub.remember_final(d)
        return d

    async def decided_purchase(self, pid: str) -> Decision | None:
        """Like purchase_from_db, for the sold-out fast path, which asks it for every new click:
        the ids asked while one query is out go out together in the next, one query for all."""
        fut = self._next_lookup.get(pid)
        if fut is None:
            fut = self._next_lookup[pid] = asyncio.get_running_loop().create_future()
            if not self._looking_up:
                task = asyncio.create_task(self._look_up())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(fut)

    async def load_skus_before_follower(self) -> None:
        """Read which SKUs have purchases or draw entries. Called once the follower has started:
        every purchase of a SKU without any then is read by the follower (sold_out_purchase).
        Left unknown (every sold-out click asks Postgres) when they are more than SKUS_MAX or
        Postgres does not answer in time."""
        try:
            rows = await self.pool.fetch(_SKUS_WITH_ROWS, SKUS_MAX + 1, timeout=DB_TIMEOUT_S)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.warning("SKUs with purchases not read", extra=kv(error=repr(exc)))
            return
        if len(rows) > SKUS_MAX:
            log.warning("more SKUs with purchases than remembered", extra=kv(skus_max=SKUS_MAX))
            return
        self.skus_before_follower = frozenset(row["sku"] for row in rows)

    async def sold_out_purchase(self, pid: str, sku: str) -> Decision | None:
        """For the sold-out fast path, after its barrier on the SKU's shard and with `pid` not
        pending: the decided purchase `pid` names if it may be a purchase of `sku`, else None.

        Postgres is asked only when it may hold one. It cannot when the follower never read
        `pid` and `sku` had no purchase or draw entry once the follower had started: a decided
        purchase of `sku` was decided from a stored intent of `sku`; one stored before the
        follower's start sequence was acknowledged, so committed, by then (`sku` would have
        had a row); one stored after it was read by the follower (every one up to the
        barrier), unless a message was deleted unread (then `FollowedIds.whole` is False). A
        purchase of another SKU under the same key (a reuse with another body) that the
        follower never read is not visible here, as at the edge: the click is a 409, which
        creates nothing."""
        followed = self.hub.queues.followed
        before = self.skus_before_follower
        if before is None or sku in before or not followed.whole or followed.may_hold(pid):
            return await self.decided_purchase(pid)
        return None

    async def _look_up(self) -> None:
        self._looking_up = True
        try:
            while self._next_lookup:
                batch, self._next_lookup = self._next_lookup, {}
                try:
                    rows = await self.pool.fetch(
                        f"SELECT {PURCHASE_COLUMNS} FROM purchases WHERE id = ANY($1)", list(batch),
                        timeout=DB_TIMEOUT_S,
                    )
                    found = {row["id"]: decision_of(row) for row in rows}
                except Exception as exc:  # each caller answers it as its own query's failure
                    for fut in batch.values():
                        if not fut.done():
                            fut.set_exception(exc)
                            fut.add_done_callback(_retrieve)
                    continue
                for pid, fut in batch.items():
                    d = found.get(pid)
                    if d is not None:
                        self.hub.remember_final(d)
                    if not fut.done():
                        fut.set_result(d)
        finally:
            self._looking_up = False

    def charge(self, client: str) -> None:
        """Spend one of `client`'s lookups of things that do not exist, or a 429 when it has
        none left: before a lookup's first query, and for a name that cannot exist (outside its
        grammar), refused at once."""
        if self.misses is not None and (wait_s := self.misses.acquire(client, time.monotonic())):
            raise _too_many_misses(wait_s)

    def _found(self, client: str) -> None:
        if self.misses is not None:
            self.misses.refund(client)

    async def lookup(self, pid: str, reader: Reader, client: str) -> PurchaseState | None:
        """The purchase's current state if `reader` may read it (a Purchase, the intent, means
        pending), else None. A purchase the reader may not read is looked up exactly like one
        that does not exist, tier after tier: the same queries, the same charge."""
        d = self.hub.decision(pid)
        if d is not None and reader.may_read(d.user_id):
            return d
        self.charge(client)
        found = await self._uncached(pid, reader)
        if found is not None:
            self._found(client)
        return found

    async def _uncached(self, pid: str, reader: Reader) -> PurchaseState | None:
        d = await self.purchase_from_db(pid)
        if d is not None and reader.may_read(d.user_id):
            return d
        # Accepted (perhaps by another instance) but not decided yet. The SKU, hence the shard,
        # is unknown from the id alone: wait until every shard's stream is read as far as it
        # reaches now. Another buyer's purchase takes the same steps as a missing one.
        intent = self.hub.queues.pending(pid)
        if intent is None or not reader.may_read(intent.user_id):
            await asyncio.gather(*(self.follower.barrier(shard) for shard in range(self.shards)))
            intent = self.hub.queues.pending(pid)
        if intent is not None and reader.may_read(intent.user_id):
            # Decided between the Postgres read and now? The cache has it by then.
            return self.hub.decision(pid) or intent
        # Decided (and so dropped from the pending ones) between the Postgres read and the
        # barrier: Postgres has it now.
        d = await self.purchase_from_db(pid)
        return d if d is not None and reader.may_read(d.user_id) else None

    async def draw_ranks(self, sku: str, after_rank: int, limit: int) -> list[tuple[str, int]]:
        """(purchase id, rank) of a drawn SKU's entries after `after_rank`, by rank."""
        rows = await self.pool.fetch(
            """SELECT id, draw_rank FROM purchases WHERE sku = $1 AND draw_rank > $2
               ORDER BY draw_rank LIMIT $3""",
            sku, after_rank, limit, timeout=DB_TIMEOUT_S,
        )
        return [(row["id"], row["draw_rank"]) for row in rows]

    async def sku_state(self, sku: str, client: str) -> SkuState | None:
        state = self.hub.skus.get(sku)
        if state is not None:
            return state
        self.charge(client)
        now = time.monotonic()
        if self._unknown_skus.get(sku, 0.0) > now:
            return None
        row = await self.pool.fetchrow(
            f"SELECT {SKU_COLUMNS} FROM skus WHERE sku = $1", sku, timeout=DB_TIMEOUT_S
        )
        if row is None:
            # Remember the miss briefly: a flood of one junk SKU costs one query per second.
            self._unknown_skus.pop(sku, None)
            self._unknown_skus[sku] = now + UNKNOWN_SKU_TTL_S
            if len(self._unknown_skus) > UNKNOWN_SKUS_MAX:
                self._unknown_skus.popitem(last=False)
            return None
        self._found(client)
        state = sku_state_of(row)
        self.hub.remember_sku(state)
        return self.hub.skus.get(sku, state)

# The distinct SKUs of purchases (one index probe per SKU: a loose scan of purchases_sku_user)
# and of draw entries (only those waiting), in one snapshot, at most $1 of them.
_SKUS_WITH_ROWS = """
    WITH RECURSIVE decided(sku) AS (
        (SELECT sku FROM purchases ORDER BY sku LIMIT 1)
        UNION ALL
        SELECT (SELECT p.sku FROM purchases p WHERE p.sku > d.sku ORDER BY p.sku LIMIT 1)
        FROM decided d WHERE d.sku IS NOT NULL
    )
    SELECT sku FROM decided WHERE sku IS NOT NULL
    UNION
    SELECT DISTINCT sku FROM draw_entries
    LIMIT $1
"""


def _too_many_misses(wait_s: float) -> problems.Rejection:
    return problems.Rejection(
        429, "too_many_misses", "Too many lookups of things that do not exist",
        "this client looked up too many unknown purchases or SKUs; slow down",
        retry_after_s=RateLimiter.retry_after_s(wait_s),
    )


def _retrieve(fut: asyncio.Future[Decision | None]) -> None:
    if not fut.cancelled():
        fut.exception()
