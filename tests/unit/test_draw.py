"""The draw of a SKU's opening burst: examples first, then hypothesis on the order's purity."""

from __future__ import annotations

import hashlib
import hmac
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from committer import draw as draw_module
from committer.draw import DRAW_GRACE_MS, Entry
from committer.machine import Machine
from committer.step import Sku, Step
from proto.draw import commitment_of, draw_order
from proto.messages import TIME_MAX_MS, Decision, Purchase, SkuUpsert

T0 = 1_700_000_000_000
WINDOW_S = 2
CLOSES = T0 + WINDOW_S * 1000
DECIDES = CLOSES + DRAW_GRACE_MS
SEED = "ab" * 32


def purchase(pid: str, user: str | None = None, at: int = T0 + 10, qty: int = 1,
             token: str | None = None) -> Purchase:
    return Purchase(id=pid, sku="s", qty=qty, user_id=user or f"user-{pid}", request_hash="h",
                    accepted_at_ms=at, payment_token=token)


def sku(stock: int = 2, **kw: object) -> Sku:
    fields: dict[str, object] = dict(sku="s", stock=stock, price_cents=100, sale_start_ms=T0,
                                     draw_window_s=WINDOW_S, draw_seed=SEED)
    fields.update(kw)
    return Sku(**fields)  # type: ignore[arg-type]


def machine(stock: int = 2, **kw: object) -> Machine:
    m = Machine(shard=0)
    m.load_sku(sku(stock, **kw))
    return m


def outcome(decisions: list[Decision]) -> dict[str, tuple[str, str | None, int | None]]:
    return {d.id: (d.status, d.reason, d.draw_rank) for d in decisions}


def test_entries_stay_pending_until_the_draw_then_are_decided_in_hmac_order():
    m = machine(stock=2)
    entered = m.step([purchase(x) for x in "abcde"], T0 + 100)
    assert entered.inserts == [] and entered.results == []
    assert [e.purchase.id for e in entered.draw_entries] == list("abcde")
    assert entered.has_writes and m.skus["s"].draw_entries == 5
    assert m.step([], DECIDES - 1).inserts == []
    drawn = m.step([], DECIDES)
    order = draw_order(SEED, "abcde")
    assert [d.id for d in drawn.inserts] == order
    assert [d.draw_rank for d in drawn.inserts] == [1, 2, 3, 4, 5]
    assert [d.status for d in drawn.inserts] == ["confirmed"] * 2 + ["rejected"] * 3
    assert drawn.drawn == ["s"] and m.skus["s"].drawn_at_ms == DECIDES
    assert m.skus["s"].sold == 2 and "s" not in m.draws


def test_the_order_is_hmac_sha256_of_seed_and_purchase_id():
    ids = [f"p{i}" for i in range(50)]
    keys = {pid: hmac.new(bytes.fromhex(SEED), pid.encode(), hashlib.sha256).digest() for pid in ids}
    assert draw_order(SEED, reversed(ids)) == sorted(ids, key=keys.__getitem__)
    assert commitment_of(SEED) == hashlib.sha256(bytes.fromhex(SEED)).hexdigest()


def test_the_seed_is_revealed_only_after_the_draw():
    m = machine()
    state = m.skus["s"].state()
    assert state.draw_seed is None and state.draw_commitment == commitment_of(SEED)
    m.step([], DECIDES)
    assert m.skus["s"].state().draw_seed == SEED


def test_one_entry_per_buyer_further_keys_are_rejected_at_once():
    m = machine()
    step = m.step([purchase("a", user="u"), purchase("b", user="u"), purchase("a", user="u")], T0 + 5)
    assert [e.purchase.id for e in step.draw_entries] == ["a"]
    assert outcome(step.inserts) == {"b": ("rejected", "already_in_draw", None)}
    assert m.step([purchase("a", user="u")], T0 + 50).results == []  # a retry: still pending


def test_purchases_clicked_after_the_window_wait_for_the_draw_then_go_first_come_first_served():
    m = machine(stock=3)
    m.step([purchase("a"), purchase("b")], T0 + 10)
    waiting = m.step([purchase("late1", at=CLOSES), purchase("late2", at=CLOSES + 5)], CLOSES + 10)
    assert waiting.inserts == [] and [e.ranked for e in waiting.draw_entries] == [False, False]
    drawn = m.step([], DECIDES)
    assert [d.id for d in drawn.inserts] == [*draw_order(SEED, "ab"), "late1", "late2"]
    assert [d.draw_rank for d in drawn.inserts] == [1, 2, None, None]
    assert [d.status for d in drawn.inserts] == ["confirmed"] * 3 + ["rejected"]
    # Anything after the draw, an entry that arrived too late included: first come first served.
    after = m.step([purchase("c", at=T0 + 20)], DECIDES + 5)
    assert outcome(after.inserts) == {"c": ("rejected", "sold_out", None)}


def test_a_purchase_in_the_batch_that_reaches_the_deadline_is_in_the_draw():
    m = machine(stock=1)
    step = m.step([purchase("a", at=T0 + 1), purchase("b", at=CLOSES + 1)], DECIDES + 3)
    assert [(d.id, d.draw_rank) for d in step.inserts] == [("a", 1), ("b", None)]


def test_click_time_is_clamped_to_the_writers_clock():
    m = machine()
    # Stamped inside the window by an ingest whose clock runs ahead of the writer's: not open yet.
    step = m.step([purchase("a", at=T0 + 10)], T0 - 5)
    assert outcome(step.inserts) == {"a": ("rejected", "sale_not_open", None)}


def test_held_draws_wait_for_the_shell():
    m = machine()
    m.step([purchase("a")], T0 + 10)
    assert m.next_draw_ms() == DECIDES
    assert m.step([], DECIDES + 100, draws_held=True).inserts == []
    assert [d.id for d in m.step([], DECIDES + 200).inserts] == ["a"]
    assert m.next_draw_ms() is None


def test_entries_are_bounded(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(draw_module, "DRAW_ENTRIES_MAX", 2)
    m = machine()
    step = m.step([purchase("a"), purchase("b"), purchase("c"), purchase("d", at=CLOSES)], T0 + 10)
    assert outcome(step.inserts) == {"c": ("rejected", "draw_full", None),
                                     "d": ("rejected", "draw_full", None)}
    assert m.skus["s"].draw_entries == 2


def test_winners_of_a_paid_sku_are_reserved_with_their_payment_token():
    m = machine(stock=1, payment="required")
    m.step([purchase("a", token="tok_visa"), purchase("b", token="tok_visa")], T0 + 10)
    step = m.step([], DECIDES)
    winner = draw_order(SEED, "ab")[0]
    assert [(j.id, j.payment_token) for j in step.payments] == [(winner, "tok_visa")]


def test_caps_hold_in_the_draw():
    m = machine(stock=10, max_per_user=1)
    m.step([purchase("a", qty=2)], T0 + 10)
    assert outcome(m.step([], DECIDES).inserts) == {"a": ("rejected", "limit_exceeded", 1)}


def test_an_empty_draw_is_decided_and_revealed_too():
    m = machine()
    step = m.step([], DECIDES)
    assert step.drawn == ["s"] and step.skus["s"].drawn_at_ms == DECIDES


def upsert(**kw: object) -> SkuUpsert:
    fields: dict[str, object] = dict(request_id="r", sku="s", stock=5)
    fields.update(kw)
    return SkuUpsert(**fields)  # type: ignore[arg-type]


def test_upserts_that_would_break_a_draw_are_refused():
    m = Machine(shard=0)
    refusals = m.step([
        upsert(draw_window_s=2, draw_seed=SEED),  # no sale_start
        upsert(draw_window_s=2, sale_start_ms=T0 + 10),  # no seed
        upsert(draw_window_s=2, sale_start_ms=T0 - 10, draw_seed=SEED),  # already open
        upsert(draw_window_s=2, sale_start_ms=T0 + 10, draw_seed="XY"),
        upsert(draw_window_s=3600, sale_start_ms=TIME_MAX_MS - 3_600_000, draw_seed=SEED),
    ], T0).refusals
    assert [r.reason for r in refusals] == [
        "a draw window needs a sale_start", "a draw needs a seed",
        "a draw window must open after the change: sale_start is already past",
        "draw_seed must be 64 lowercase hex digits",
        "a draw must be decided by the end of year 9999 (UTC)",
    ]
    applied = m.step([upsert(draw_window_s=2, sale_start_ms=T0 + 10, draw_seed=SEED)], T0)
    assert applied.admin_applied == ["r"] and "s" in m.draws
    # A later seed never replaces the committed one; stock may change, the window may not once open.
    m.step([upsert(stock=7, draw_seed="cd" * 32)], T0 + 1)
    assert m.skus["s"].draw_seed == SEED and m.skus["s"].stock == 7
    late = m.step([upsert(draw_window_s=5), upsert(sale_start_ms=T0 + 99),
                   upsert(clear=["sale_start_ms"]), upsert(stock=9)], T0 + 20)
    fixed = "the draw window has opened: draw_window_s and sale_start are fixed"
    assert [r.reason for r in late.refusals] == [fixed, fixed, "a draw window needs a sale_start"]
    assert late.admin_applied == ["r"]


# -- properties --------------------------------------------------------------------------------

buyers = st.lists(st.tuples(st.text("abcdef0123456789", min_size=4, max_size=8), st.integers(1, 2)),
                  min_size=0, max_size=25, unique_by=lambda t: t[0])


def run(purchases: list[Purchase], cuts: list[int], stock: int, seed: str,
        restart_after: int | None = None) -> dict[str, tuple[str, str | None, int | None]]:
    """Feed the purchases in batches cut at `cuts`, with a rebuild from the persisted entries
    after batch `restart_after` (what the store does after a crash), then decide the draw."""
    m = machine(stock=stock, draw_seed=seed)
    decided: list[Decision] = []
    entries: list[Entry] = []
    bounds = [0, *sorted(set(cuts)), len(purchases)]
    for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        step: Step = m.step(purchases[lo:hi], T0 + 100 + n)
        decided += step.inserts
        entries += step.draw_entries
        if restart_after == n:
            sku_row = m.skus["s"]
            m = Machine(shard=0)
            m.load_sku(Sku(**{**sku_row.__dict__}))
            for e in entries:
                m.load_draw_entry(e)
    decided += m.step([], DECIDES).inserts
    return outcome(decided)


@settings(max_examples=150, deadline=None)
@given(people=buyers, data=st.data(), stock=st.integers(0, 8),
       seed=st.binary(min_size=32, max_size=32).map(bytes.hex))
def test_the_outcome_is_a_pure_function_of_seed_and_entries(people, data, stock, seed):
    ids = [f"{name}-k{k}" for name, keys in people for k in range(keys)]
    purchases = [purchase(pid, user=pid.split("-")[0]) for pid in ids]
    shuffled = data.draw(st.permutations(purchases))
    # Retries of the same intents anywhere in the stream change nothing.
    retried = shuffled + data.draw(st.lists(st.sampled_from(shuffled), max_size=5)) if shuffled else []
    cuts = data.draw(st.lists(st.integers(0, len(retried)), max_size=4))
    restart = data.draw(st.none() | st.integers(0, 4))
    got = run(retried, cuts, stock, seed, restart)
    # The first key of each buyer to arrive is the buyer's entry; the others are refused.
    first: dict[str, str] = {}
    for p in retried:
        first.setdefault(p.user_id, p.id)
    entries = set(first.values())
    order = draw_order(seed, entries)
    expected = {pid: ("confirmed" if rank <= stock else "rejected",
                      None if rank <= stock else "sold_out", rank)
                for rank, pid in enumerate(order, start=1)}
    expected.update({pid: ("rejected", "already_in_draw", None) for pid in ids if pid not in entries})
    assert got == expected


@settings(max_examples=100, deadline=None)
@given(ids=st.sets(st.text("0123456789abcdef", min_size=1, max_size=10), max_size=30),
       data=st.data(), seed=st.binary(min_size=32, max_size=32).map(bytes.hex))
def test_the_order_does_not_depend_on_arrival_order_or_batches(ids, data, seed):
    purchases = [purchase(pid) for pid in ids]
    a = run(data.draw(st.permutations(purchases)), data.draw(st.lists(st.integers(0, 30))), 3, seed)
    b = run(data.draw(st.permutations(purchases)), data.draw(st.lists(st.integers(0, 30))), 3, seed,
            restart_after=data.draw(st.integers(0, 3)))
    assert a == b
