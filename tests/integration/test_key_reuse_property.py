"""Hypothesis, stateful: two shards' writers (the committer's machine, its store and its
`decide`) on a real Postgres, fed random requests of a few buyers who share keys across SKUs of
both shards, cancel what is not theirs or not there, pay, crash and decide at the same moment.
No sequence raises an invariant error or CorruptWrite, and no purchase id is decided twice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from committer import store
from committer.batch import decide
from committer.machine import Machine
from committer.schema import PURCHASE_COLUMNS, decision_of
from committer.step import Step
from config.settings import Settings
from proto.messages import (
    KEY_REUSED,
    Cancel,
    Confirm,
    Decision,
    Intent,
    Purchase,
    Release,
    SkuUpsert,
)
from proto.sharding import shard_of
from tests.history import check_stored

SHARDS = 2
T0 = 1_700_000_000_000
TTL_MS = 3_600_000  # the lease: never the subject here
BUYERS = ("u1", "u2", "u3")
KEYS = ("k1", "k2", "k3")
SEEN_MAX = 4  # small, so that rebuilt writers forget and ask Postgres


def skus_of(shard: int) -> tuple[str, str, str]:
    """A SKU without payment, one with, and one sold by a draw, of the shard."""
    names = [f"sku-{i}" for i in range(100) if shard_of(f"sku-{i}", SHARDS) == shard]
    return names[0], names[1], names[2]


# What the examples went through, summed over them: the test fails if it never met a twin.
SEEN = {"met at insert": 0, "refused": 0, "refused, the other in a draw": 0}

SKUS = {shard: skus_of(shard) for shard in range(SHARDS)}
ALL_SKUS = [name for names in SKUS.values() for name in names]


def pid(buyer: str, key: str) -> str:
    return f"p_{buyer}_{key}"


class Writer:
    def __init__(self, shard: int, conn: asyncpg.Connection, epoch: int) -> None:
        self.shard = shard
        self.conn = conn
        self.epoch = epoch
        self.machine: Machine = Machine(shard, SHARDS, SEEN_MAX)
        self.stream: list[Intent] = []  # intents stored for it, not yet decided

    async def commit(self, step: Step, t: int) -> None:
        await store.commit(self.conn, self.shard, self.epoch, TTL_MS, step, t)

    async def lookup(self, ids: list[str]) -> list[Decision | Purchase]:
        return await store.lookup(self.conn, ids)

    async def take(self, n: int, t: int) -> Step:
        """Decide the next `n` intents of its stream, as the committer's loop does."""
        batch, self.stream = self.stream[:n], self.stream[n:]
        unknown = self.machine.unknown_ids(batch)
        if unknown:
            self.machine.found_in_postgres(await self.lookup(unknown))
        return await decide(self.machine, batch, t, lambda step: self.commit(step, t), self.met)

    async def met(self, ids: list[str]) -> list[Decision | Purchase]:
        """`decide` reads back ids its insert met in Postgres."""
        SEEN["met at insert"] += 1
        return await self.lookup(ids)

    async def rebuild(self) -> None:
        self.machine = await store.load_machine(self.conn, self.shard, SHARDS, SEEN_MAX)


def run_writers(settings_: Settings, max_examples: int) -> None:
    loop = asyncio.new_event_loop()
    run = loop.run_until_complete
    conns = [run(asyncpg.connect(settings_.database_url)) for _ in range(SHARDS + 1)]
    db = conns[SHARDS]

    class Writers(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            run(db.execute("TRUNCATE purchases, skus, shard_leases, draw_entries"))
            self.now = T0
            self.writers: list[Writer] = []
            for shard in range(SHARDS):
                epoch, _ = run(store.acquire_lease(conns[shard], shard, f"test-{shard}", TTL_MS))
                assert epoch is not None
                w = Writer(shard, conns[shard], epoch)
                free, paid, drawn = SKUS[shard]
                w.stream = [
                    SkuUpsert(request_id=f"r-{free}", sku=free, stock=3, max_per_user=2),
                    SkuUpsert(request_id=f"r-{paid}", sku=paid, stock=3, payment="required",
                              reservation_ttl_s=5),
                    # Its window opens 2 s in and lasts 2 s; decided after the grace.
                    SkuUpsert(request_id=f"r-{drawn}", sku=drawn, stock=2, sale_start_ms=T0 + 2000,
                              draw_window_s=2, draw_seed=f"{shard}" * 64),
                ]
                applied = run(w.take(3, self.now)).admin_applied
                assert len(applied) == 3, applied
                self.writers.append(w)
            self.sent: dict[str, set[str]] = {}  # purchase id -> request hashes sent for it
            self.first: dict[str, Decision] = {}  # purchase id -> its first decision seen

        def _observe(self, steps: list[Step]) -> None:
            for step in steps:
                for d in step.results:
                    first = self.first.setdefault(d.id, d)
                    assert (d.decided_at_ms, d.request_hash) == (first.decided_at_ms, first.request_hash), \
                        f"{d.id} decided twice: {first} then {d}"
                for r in step.refusals:
                    if r.kind == "purchase" and r.reason == KEY_REUSED:
                        SEEN["refused"] += 1
                        SEEN["refused, the other in a draw"] += r.status == "pending"
                        row = run(db.fetchrow(
                            "SELECT request_hash FROM purchases WHERE id = $1 UNION ALL "
                            "SELECT request_hash FROM draw_entries WHERE id = $1", r.key))
                        assert row is not None and row["request_hash"] != r.request_hash, r

        @rule(buyer=st.sampled_from(BUYERS), key=st.sampled_from(KEYS), sku=st.sampled_from(ALL_SKUS),
              qty=st.integers(1, 2), late_ms=st.integers(0, 10_000))
        def buy(self, buyer: str, key: str, sku: str, qty: int, late_ms: int) -> None:
            request_hash = f"{sku}/{qty}/{buyer}"
            self.sent.setdefault(pid(buyer, key), set()).add(request_hash)
            self.writers[shard_of(sku, SHARDS)].stream.append(Purchase(
                id=pid(buyer, key), sku=sku, qty=qty, user_id=buyer, request_hash=request_hash,
                accepted_at_ms=self.now - late_ms, payment_token="tok_visa"))

        @rule(buyer=st.sampled_from(BUYERS), key=st.sampled_from(KEYS), shard=st.integers(0, SHARDS - 1))
        def cancel(self, buyer: str, key: str, shard: int) -> None:
            # Any shard: a cancel of a purchase that is elsewhere, pending, decided or unknown.
            self.writers[shard].stream.append(Cancel(id=pid(buyer, key)))

        @rule(buyer=st.sampled_from(BUYERS), key=st.sampled_from(KEYS), paid=st.booleans(),
              shard=st.integers(0, SHARDS - 1))
        def gateway(self, buyer: str, key: str, paid: bool, shard: int) -> None:
            row = run(db.fetchrow("SELECT sku FROM purchases WHERE id = $1", pid(buyer, key)))
            if row is not None:
                shard = shard_of(row["sku"], SHARDS)  # the gateway answers the deciding shard
            intent: Intent = (Confirm(id=pid(buyer, key), psp_ref="pi", amount_cents=1) if paid
                              else Release(id=pid(buyer, key), reason="payment_declined"))
            self.writers[shard].stream.append(intent)

        @rule(shard=st.integers(0, SHARDS - 1), n=st.integers(1, 6), dt=st.integers(0, 3000))
        def decide_one(self, shard: int, n: int, dt: int) -> None:
            self.now += dt
            self._observe([run(self.writers[shard].take(n, self.now))])

        @rule(n=st.integers(1, 6), dt=st.integers(0, 3000))
        def decide_both_at_once(self, n: int, dt: int) -> None:
            """Both writers in their transactions at the same moment: one waits for the other's
            row and finds it, or both go through."""
            self.now += dt

            async def both() -> list[Step]:
                return list(await asyncio.gather(*(w.take(n, self.now) for w in self.writers)))

            self._observe(run(both()))

        @rule(shard=st.integers(0, SHARDS - 1))
        def crash_and_rebuild(self, shard: int) -> None:
            run(self.writers[shard].rebuild())

        @invariant()
        def postgres_holds_one_story(self) -> None:
            run(check_stored(db))
            rows = run(db.fetch(f"SELECT {PURCHASE_COLUMNS} FROM purchases"))
            for row in rows:
                d = decision_of(row)
                assert d.request_hash in self.sent.get(d.id, set()), d
                seen = self.first.get(d.id)
                assert seen is None or seen.decided_at_ms == d.decided_at_ms, (seen, d)

        @invariant()
        def each_writer_is_what_postgres_says(self) -> None:
            """What a writer holds in memory (after any number of steps taken back) is what a
            writer rebuilt from Postgres would hold."""
            for w in self.writers:
                fresh = run(store.load_machine(db, w.shard, SHARDS, SEEN_MAX))
                mine = w.machine
                assert {n: (s.stock, s.reserved, s.sold) for n, s in mine.skus.items()} == \
                    {n: (s.stock, s.reserved, s.sold) for n, s in fresh.skus.items()}
                assert mine.reserved.keys() == fresh.reserved.keys()
                assert {k: q for k, q in mine.user_qty.items() if q} == \
                    {k: q for k, q in fresh.user_qty.items() if q}
                assert {n: set(d.entries) for n, d in mine.draws.items()} == \
                    {n: set(d.entries) for n, d in fresh.draws.items()}

    try:
        run_state_machine_as_test(Writers, settings=settings(
            max_examples=max_examples, stateful_step_count=30, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    finally:
        for conn in conns:
            run(conn.close())
        loop.close()


def test_writers_never_decide_an_id_twice_nor_stop(settings: Settings) -> None:
    run_writers(settings, max_examples=100)
    print("key reuse property:", SEEN)
    assert SEEN["met at insert"] > 0 and SEEN["refused"] > 0, SEEN


def test_one_key_in_the_draws_of_two_shards_is_one_entry(settings: Settings) -> None:
    """The same key entered in a draw on each shard: the second insert meets the first entry,
    that intent is refused (pending elsewhere), and the draws decide the id once."""

    async def scenario() -> None:
        conns = [await asyncpg.connect(settings.database_url) for _ in range(SHARDS)]
        try:
            writers = await leased_writers(conns, lambda shard: [drawn_sku(shard, stock=2)])
            for shard, w in enumerate(writers):
                w.stream = [Purchase(id="p_twin", sku=SKUS[shard][2], qty=1, user_id="mallory",
                                     request_hash=f"h{shard}", accepted_at_ms=T0 + 1000)]
            first = await writers[0].take(1, T0 + 1000)
            second = await writers[1].take(1, T0 + 1000)
            assert [e.purchase.id for e in first.draw_entries] == ["p_twin"] and not first.refusals
            [refusal] = second.refusals
            assert (refusal.reason, refusal.status, refusal.request_hash) == (KEY_REUSED, "pending", "h1")
            assert not second.draw_entries and not writers[1].machine.draws[SKUS[1][2]].entries
            decided = [await w.take(0, T0 + 8000) for w in writers]
            assert [d.id for d in decided[0].inserts] == ["p_twin"] and not decided[1].inserts
            assert await conns[0].fetchval("SELECT count(*) FROM purchases WHERE id = 'p_twin'") == 1
        finally:
            for conn in conns:
                await conn.close()

    asyncio.run(scenario())


def drawn_sku(shard: int, stock: int) -> SkuUpsert:
    """The shard's SKU sold by a draw: its window opens at T0 + 500 ms and lasts 5 s."""
    drawn = SKUS[shard][2]
    return SkuUpsert(request_id=f"r-{drawn}", sku=drawn, stock=stock, sale_start_ms=T0 + 500,
                     draw_window_s=5, draw_seed=f"{shard}" * 64)


async def leased_writers(conns: list[asyncpg.Connection],
                         upserts: Callable[[int], list[SkuUpsert]]) -> list[Writer]:
    """A Writer per shard on its connection, holding the shard's lease, `upserts(shard)` applied."""
    writers = []
    for shard in range(SHARDS):
        epoch, _ = await store.acquire_lease(conns[shard], shard, "test", TTL_MS)
        assert epoch is not None
        w = Writer(shard, conns[shard], epoch)
        w.stream = upserts(shard)
        count = len(w.stream)
        assert len((await w.take(count, T0)).admin_applied) == count
        writers.append(w)
    return writers


async def _blocked_on_a_lock(db: asyncpg.Connection, conn: asyncpg.Connection) -> None:
    pid_ = conn.get_server_pid()
    for _ in range(1000):
        if await db.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid_):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the writer never waited for the lock")


def test_an_entry_and_a_purchase_of_one_key_committed_at_once_are_one_decision(settings: Settings) -> None:
    """One key: a purchase on one shard and an entry in the other shard's draw, committed at the
    same moment, so neither insert sees the other's row. The draw meets the purchase when it is
    decided: it refuses that entry (its waiters learn 422), ranks the others, and the writer goes
    on deciding; Postgres holds one decision for the id. Bounded: a writer that decided the draw
    again without end fails here instead of hanging."""

    async def scenario() -> None:
        conns = [await asyncpg.connect(settings.database_url) for _ in range(SHARDS + 1)]
        db = conns[SHARDS]
        try:
            writers = await leased_writers(conns, lambda shard: [
                SkuUpsert(request_id=f"r-{SKUS[shard][0]}", sku=SKUS[shard][0], stock=5),
                drawn_sku(shard, stock=5)])
            free, drawn = SKUS[0][0], SKUS[1][2]
            writers[0].stream = [Purchase(id="p_twin", sku=free, qty=1, user_id="mallory",
                                          request_hash="h-bought", accepted_at_ms=T0 + 1000)]
            writers[1].stream = [
                Purchase(id=pid_, sku=drawn, qty=1, user_id=user, request_hash=f"h-{pid_}",
                         accepted_at_ms=T0 + 1000)
                for pid_, user in (("p_twin", "mallory"), ("p_other", "bob"))]
            # Shard 0's batch statement takes its snapshot, then waits for its SKU's row (held
            # here) while shard 1 commits the entries: the purchase is inserted after all.
            async with db.transaction():
                await db.execute("SELECT FROM skus WHERE sku = $1 FOR UPDATE", free)
                buying = asyncio.ensure_future(writers[0].take(1, T0 + 1000))
                await _blocked_on_a_lock(db, conns[0])
                entered = await writers[1].take(2, T0 + 1000)
            bought = await buying
            assert [(d.id, d.status) for d in bought.inserts] == [("p_twin", "confirmed")]
            assert sorted(e.purchase.id for e in entered.draw_entries) == ["p_other", "p_twin"]

            drawn_step = await asyncio.wait_for(writers[1].take(0, T0 + 8000), timeout=60)
            [refusal] = drawn_step.refusals
            assert (refusal.key, refusal.reason, refusal.status, refusal.request_hash) == (
                "p_twin", KEY_REUSED, "confirmed", "h-p_twin")
            assert [(d.id, d.draw_rank) for d in drawn_step.inserts] == [("p_other", 1)]
            writers[1].stream = [Purchase(id="p_later", sku=drawn, qty=1, user_id="carol",
                                          request_hash="h-later", accepted_at_ms=T0 + 9000)]
            later = await asyncio.wait_for(writers[1].take(1, T0 + 9000), timeout=60)
            assert [(d.id, d.status) for d in later.inserts] == [("p_later", "confirmed")]

            rows = await db.fetch("SELECT id, sku, request_hash FROM purchases ORDER BY id")
            assert [tuple(r) for r in rows] == [("p_later", drawn, "h-later"),
                                                ("p_other", drawn, "h-p_other"),
                                                ("p_twin", free, "h-bought")]
            assert await db.fetchval("SELECT count(*) FROM draw_entries") == 0
            assert await db.fetchval("SELECT draw_entries FROM skus WHERE sku = $1", drawn) == 1
            await check_stored(db)
        finally:
            for conn in conns:
                await conn.close()

    asyncio.run(scenario())
