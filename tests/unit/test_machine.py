"""The committer's pure decision machine: examples first, then hypothesis interleavings."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from committer.machine import WRONG_SHARD, Machine
from committer.step import InvariantViolation, Sku
from proto.draw import draw_order
from proto.messages import KEY_REUSED, Cancel, Confirm, Decision, Purchase, Refusal, Release, SkuUpsert
from proto.sharding import shard_of

T0 = 1_700_000_000_000


def purchase(pid: str, sku: str = "s", user: str = "u", qty: int = 1, at: int = T0, token=None,
             request_hash: str = "h"):
    return Purchase(id=pid, sku=sku, qty=qty, user_id=user, request_hash=request_hash,
                    accepted_at_ms=at, payment_token=token)


def machine(stock: int = 3, **kw) -> Machine:
    m = Machine(shard=0)
    m.load_sku(Sku(sku="s", stock=stock, price_cents=100, **kw))
    return m


def test_sells_exactly_the_stock_then_sold_out():
    m = machine(stock=2)
    step = m.step([purchase("a", user="1"), purchase("b", user="2"), purchase("c", user="3")], T0)
    assert [d.status for d in step.inserts] == ["confirmed", "confirmed", "rejected"]
    assert step.inserts[2].reason == "sold_out"
    assert m.skus["s"].sold == 2 and m.skus["s"].remaining == 0
    assert step.inserts[0].amount_cents == 100


def test_duplicate_id_is_answered_not_decided_again():
    m = machine(stock=5)
    first = m.step([purchase("a")], T0)
    again = m.step([purchase("a"), purchase("a")], T0 + 5)
    assert again.inserts == [] and not again.has_writes
    assert again.results == [first.inserts[0], first.inserts[0]]
    assert m.skus["s"].sold == 1


def test_duplicate_inside_one_batch():
    m = machine(stock=5)
    step = m.step([purchase("a"), purchase("a")], T0)
    assert len(step.inserts) == 1 and len(step.results) == 2
    assert m.skus["s"].sold == 1


def test_per_user_cap():
    m = machine(stock=10, max_per_user=2)
    step = m.step([purchase("a", qty=2), purchase("b", qty=1), purchase("c", user="v", qty=2)], T0)
    assert [(d.status, d.reason) for d in step.inserts] == [
        ("confirmed", None), ("rejected", "limit_exceeded"), ("confirmed", None)]


def test_unknown_sku_and_sale_window():
    m = machine(stock=10, sale_start_ms=T0, sale_end_ms=T0 + 1000)
    step = m.step([
        purchase("a", sku="nope"), purchase("b", at=T0 - 1), purchase("c", at=T0 + 1000),
        purchase("d", at=T0 + 10),
    ], T0 + 2000)
    assert [d.reason for d in step.inserts] == ["unknown_sku", "sale_not_open", "sale_ended", None]


def test_click_time_in_the_future_is_clamped_to_now():
    m = machine(stock=1, sale_end_ms=T0 + 10)
    step = m.step([purchase("a", at=T0 + 10_000)], T0)
    assert step.inserts[0].status == "confirmed"


def test_reservation_confirm_and_replay():
    m = machine(stock=1, payment="required", reservation_ttl_s=60)
    step = m.step([purchase("a", token="tok_visa")], T0)
    d = step.inserts[0]
    assert d.status == "reserved" and d.expires_at_ms == T0 + 60_000
    assert step.payments[0].payment_token == "tok_visa" and step.payments[0].amount_cents == 100
    assert m.skus["s"].reserved == 1
    done = m.step([Confirm(id="a", psp_ref="pi_1", amount_cents=100)], T0 + 10)
    assert done.updates["a"].status == "confirmed" and done.psp_refs == {"a": "pi_1"}
    assert (m.skus["s"].reserved, m.skus["s"].sold) == (0, 1)
    again = m.step([Confirm(id="a", psp_ref="pi_1", amount_cents=100)], T0 + 20)
    assert not again.has_writes and again.refusals == []


def test_expiry_returns_stock_and_late_confirm_is_refused():
    m = machine(stock=1, payment="required", reservation_ttl_s=1)
    m.step([purchase("a")], T0)
    assert m.next_expiry_ms() == T0 + 1000
    assert not m.step([], T0 + 999).has_writes
    step = m.step([], T0 + 1000)
    assert step.updates["a"].status == "expired" and m.skus["s"].remaining == 1
    late = m.step([Confirm(id="a", psp_ref="pi", amount_cents=100)], T0 + 1001)
    assert late.refusals[0].kind == "confirm" and late.refusals[0].status == "expired"
    # The returned unit sells again.
    assert m.step([purchase("b", user="w")], T0 + 1002).inserts[0].status == "reserved"


def test_release_and_cancel():
    m = machine(stock=2, payment="required", max_per_user=1)
    m.step([purchase("a"), purchase("b", user="v")], T0)
    step = m.step([Release(id="a", reason="payment_declined"), Cancel(id="b")], T0 + 1)
    assert (step.updates["a"].status, step.updates["a"].reason) == ("rejected", "payment_declined")
    assert (step.updates["b"].status, step.updates["b"].reason) == ("cancelled", "buyer_cancelled")
    assert m.skus["s"].remaining == 2
    # The cap counted them; released, the user may buy again.
    assert m.step([purchase("c")], T0 + 2).inserts[0].status == "reserved"
    # Idempotent: a second release changes nothing.
    assert not m.step([Release(id="a", reason="payment_declined")], T0 + 3).has_writes


def test_cancel_of_confirmed_is_refused():
    m = machine(stock=1)
    m.step([purchase("a")], T0)
    step = m.step([Cancel(id="a")], T0 + 1)
    assert step.refusals[0].kind == "cancel" and step.refusals[0].status == "confirmed"
    assert m.skus["s"].sold == 1


def test_admin_upsert_creates_adjusts_and_refuses_overselling_stock():
    m = Machine(shard=0)
    step = m.step([SkuUpsert(request_id="r1", sku="n", stock=2, price_cents=5)], T0)
    assert step.admin_applied == ["r1"] and m.skus["n"].price_cents == 5
    m.step([purchase("a", sku="n", qty=2)], T0)
    refused = m.step([SkuUpsert(request_id="r2", sku="n", stock=1)], T0)
    assert refused.refusals[0].key == "r2" and m.skus["n"].stock == 2
    grown = m.step([SkuUpsert(request_id="r3", sku="n", stock=5)], T0)
    assert grown.admin_applied == ["r3"] and m.skus["n"].remaining == 3 and m.skus["n"].price_cents == 5


def test_invariant_violation_is_loud():
    m = machine(stock=1, payment="required")
    m.step([purchase("a")], T0)
    m.skus["s"].reserved = 0  # corrupt the counter: giving the unit back would go negative
    with pytest.raises(InvariantViolation):
        m.step([Cancel(id="a")], T0 + 1)


def test_eviction_keeps_reservations_and_postgres_answers_for_the_rest():
    m = Machine(shard=0, seen_max=3)
    m.load_sku(Sku(sku="s", stock=100, payment="required"))
    m.step([purchase("r")], T0)
    m.load_sku(Sku(sku="t", stock=100))
    m.step([purchase(f"p{i}", sku="t", user=str(i)) for i in range(5)], T0)
    assert len(m.decisions) == 3 and "r" in m.decisions and m.forgot_any
    m.found_in_postgres([stored("x")])
    probe = [purchase("p0", sku="t", user="0"), purchase("p4", sku="t"), purchase("x"), Cancel(id="y")]
    assert m.unknown_ids(probe) == ["p0"]


def test_key_reused_with_another_request_is_refused_not_decided():
    m = machine(stock=5)
    first = m.step([purchase("a", qty=1, request_hash="h1")], T0).inserts[0]
    step = m.step([purchase("a", qty=2, request_hash="h2"), purchase("a", request_hash="h1")], T0 + 1)
    assert not step.has_writes and m.skus["s"].sold == 1
    [refusal] = step.refusals
    assert (refusal.kind, refusal.key, refusal.reason) == ("purchase", "a", "idempotency_key_reused")
    assert (refusal.status, refusal.request_hash) == ("confirmed", "h2")  # whose request it was
    assert step.results == [first]  # the retry of the first request gets its purchase


def stored(pid: str, sku: str = "elsewhere", status="reserved", request_hash: str = "h1") -> Decision:
    return Decision(id=pid, sku=sku, user_id="u", qty=1, status=status, reason=None,
                    amount_cents=100, accepted_at_ms=T0, decided_at_ms=T0, updated_at_ms=T0,
                    expires_at_ms=T0 + 1000 if status == "reserved" else None,
                    request_hash=request_hash)


def test_an_id_another_shard_decided_is_refused_and_holds_nothing():
    m = machine(stock=5, payment="required")
    m.found_in_postgres([stored("a")])  # the other shard's reservation of the same key
    step = m.step([purchase("a", request_hash="h2"), Cancel(id="a"), purchase("b", user="v")], T0)
    assert [r.kind for r in step.refusals] == ["purchase", "cancel"]
    assert [d.id for d in step.inserts] == ["b"] and step.payments[0].id == "b"
    assert m.skus["s"].reserved == 1 and set(m.reserved) == {"b"}
    assert m.step([], T0 + 600_000).updates.keys() == {"b"}  # only its own reservations expire


def test_a_forgotten_decision_read_back_answers_its_retry():
    m = machine(stock=5)
    m.found_in_postgres([stored("a", sku="s", status="confirmed", request_hash="h")])
    step = m.step([purchase("a")], T0)
    assert step.results == [m.stored["a"]] and not step.has_writes and not step.refusals


def test_a_key_waiting_in_one_draw_is_refused_for_another():
    m = Machine(shard=0)
    for name in ("d1", "d2"):
        m.load_sku(Sku(sku=name, stock=5, sale_start_ms=T0, draw_window_s=2, draw_seed="ab" * 32))
    first = m.step([purchase("a", sku="d1", at=T0 + 10, request_hash="h1")], T0 + 10)
    again = m.step([purchase("a", sku="d2", at=T0 + 20, request_hash="h2"),
                    purchase("a", sku="d1", at=T0 + 10, request_hash="h1")], T0 + 20)
    assert [e.purchase.id for e in first.draw_entries] == ["a"]
    [refusal] = again.refusals
    assert (refusal.reason, refusal.status, refusal.request_hash) == (KEY_REUSED, "pending", "h2")
    assert not again.draw_entries and not again.results  # the retry of the entry: still pending
    assert not m.draws["d2"].entries


def test_undo_then_decide_again_without_the_twin():
    m = machine(stock=1, payment="required", reservation_ttl_s=1)
    m.step([purchase("old", user="w")], T0)
    batch = [purchase("twin", user="x"), purchase("b", user="y")]
    step = m.step(batch, T0 + 1000)  # "old" expires, "twin" takes the unit, "b" is sold out
    assert [d.status for d in step.inserts] == ["reserved", "rejected"]
    m.undo()
    assert set(m.reserved) == {"old"} and m.skus["s"].reserved == 1 and "twin" not in m.decisions
    m.found_in_postgres([stored("twin")])
    again = m.step(batch, T0 + 1000)
    assert [(d.id, d.status) for d in again.inserts] == [("b", "reserved")]
    assert again.updates["old"].status == "expired" and again.refusals[0].key == "twin"


def decide_against(m: Machine, intents: list, now_ms: int, postgres: dict, rounds_max: int = 5):
    """The shell's rounds (committer/batch.decide) against what Postgres holds already: each
    insert or entry that meets a row is taken back, read back and the batch decided again."""
    for _ in range(rounds_max):
        step = m.step(intents, now_ms)
        met = [i for i in [*(d.id for d in step.inserts), *(e.purchase.id for e in step.draw_entries)]
               if i in postgres]
        if not met:
            return step
        m.undo()
        m.found_in_postgres([postgres[i] for i in met])
    raise AssertionError(f"the batch met {met} again after {rounds_max} rounds: it would loop")


def test_an_entry_whose_id_another_shard_decided_is_refused_when_the_draw_is_decided():
    """One key reused, both committed at the same moment: an entry in this shard's draw, and a
    purchase another shard decided. The draw meets that purchase, refuses its entry (its
    waiters learn 422), ranks and counts only the others, and goes on deciding."""
    m = Machine(shard=0)
    m.load_sku(Sku(sku="d", stock=5, sale_start_ms=T0, draw_window_s=2, draw_seed="ab" * 32))
    entries = [purchase(pid, sku="d", user=pid, at=T0 + 10, request_hash=f"h-{pid}")
               for pid in ("twin", "b", "c")]
    late = purchase("late-twin", sku="d", user="z", at=T0 + 2500, request_hash="h-late")
    assert len(m.step(entries, T0 + 10).draw_entries) == 3
    assert len(m.step([late], T0 + 2500).draw_entries) == 1  # waits for the draw
    elsewhere = {pid: stored(pid, status="confirmed") for pid in ("twin", "late-twin")}
    m.found_in_postgres([entries[0]])  # its own entry, read back: still its own
    assert "twin" not in m.stored
    drawn = decide_against(m, [], T0 + 4000, elsewhere)
    assert [(d.id, d.draw_rank) for d in drawn.inserts] == [(pid, rank) for rank, pid in enumerate(
        draw_order("ab" * 32, "bc"), start=1)]
    assert [(r.kind, r.key, r.reason, r.status, r.request_hash) for r in drawn.refusals] == [
        ("purchase", "twin", KEY_REUSED, "confirmed", "h-twin"),
        ("purchase", "late-twin", KEY_REUSED, "confirmed", "h-late")]
    assert drawn.drawn == ["d"] and "d" not in m.draws
    assert (m.skus["d"].draw_entries, m.skus["d"].sold) == (2, 2)
    after = m.step([purchase("next", sku="d", user="y", at=T0 + 5000)], T0 + 5000)
    assert [(d.id, d.status) for d in after.inserts] == [("next", "confirmed")]


def test_an_entry_for_an_id_another_shard_decided_is_refused_at_once():
    """The other order: the id is decided elsewhere before it reaches this shard's draw."""
    m = Machine(shard=0)
    m.load_sku(Sku(sku="d", stock=5, sale_start_ms=T0, draw_window_s=2, draw_seed="ab" * 32))
    step = decide_against(m, [purchase("twin", sku="d", at=T0 + 10, request_hash="h2")], T0 + 10,
                          {"twin": stored("twin", status="confirmed")})
    assert not step.draw_entries and not m.draws["d"].entries
    assert [(r.key, r.reason, r.status) for r in step.refusals] == [("twin", KEY_REUSED, "confirmed")]


# -- properties ----------------------------------------------------------------------------

ids = st.sampled_from([f"id{i}" for i in range(12)])
users = st.sampled_from(["u1", "u2", "u3", "u4"])
skus = st.sampled_from(["s", "t"])
intent = st.one_of(
    st.builds(lambda i, s, u, q, dt: purchase(i, sku=s, user=u, qty=q, at=T0 + dt),
              ids, skus, users, st.integers(1, 3), st.integers(-500, 5000)),
    st.builds(lambda i: Confirm(id=i, psp_ref="pi_" + i, amount_cents=1), ids),
    st.builds(lambda i, r: Release(id=i, reason=r), ids,
              st.sampled_from(["payment_declined", "payment_failed"])),
    st.builds(lambda i: Cancel(id=i), ids),
    st.builds(lambda s, n: SkuUpsert(request_id="r", sku=s, stock=n), skus, st.integers(0, 8)),
)
batches = st.lists(st.tuples(st.lists(intent, max_size=8), st.integers(0, 2000)), max_size=25)


@settings(max_examples=400, deadline=None)
@given(batches=batches, stock_s=st.integers(0, 6), stock_t=st.integers(0, 6),
       cap=st.one_of(st.none(), st.integers(1, 4)))
def test_random_interleavings_keep_every_invariant(batches, stock_s, stock_t, cap):
    m = Machine(shard=0)
    m.load_sku(Sku(sku="s", stock=stock_s, max_per_user=cap, payment="required",
                   reservation_ttl_s=1, sale_start_ms=T0, sale_end_ms=T0 + 4000))
    m.load_sku(Sku(sku="t", stock=stock_t, max_per_user=cap))
    now = T0
    first_decision: dict[str, tuple] = {}
    rows: dict[str, object] = {}  # what Postgres would hold
    for intents, dt in batches:
        now += dt
        step = m.step(intents, now)
        for d in step.inserts:
            assert d.id not in rows, "an id was decided twice"
            rows[d.id] = d
            first_decision[d.id] = (d.sku, d.user_id, d.qty)
        for d in step.updates.values():
            assert rows[d.id].status == "reserved" and d.status != "reserved"  # type: ignore[attr-defined]
            assert first_decision[d.id] == (d.sku, d.user_id, d.qty)
            rows[d.id] = d
        for d in step.results:
            assert rows[d.id] == d or d.id in step.updates, "announced something not written"
        # Never oversell, per SKU, counted from the rows themselves.
        for sku in m.skus.values():
            live = [r for r in rows.values() if r.sku == sku.sku and r.status in ("reserved", "confirmed")]  # type: ignore[attr-defined]
            assert sum(r.qty for r in live) == sku.reserved + sku.sold <= sku.stock  # type: ignore[attr-defined]
            assert sum(r.qty for r in live if r.status == "reserved") == sku.reserved  # type: ignore[attr-defined]
            if sku.max_per_user is not None:
                for user in {r.user_id for r in live}:  # type: ignore[attr-defined]
                    assert sum(r.qty for r in live if r.user_id == user) <= sku.max_per_user  # type: ignore[attr-defined]
        # Nothing reserved outlives its deadline by more than one step.
        for d in m.reserved.values():
            assert d.expires_at_ms > now


@settings(max_examples=100, deadline=None)
@given(batches=batches)
def test_rebuilding_from_rows_gives_the_same_machine(batches):
    """A crash at any point: a machine rebuilt from the committed rows decides the same way."""
    m = Machine(shard=0)
    for name in ("s", "t"):
        m.load_sku(Sku(sku=name, stock=4, max_per_user=2, payment="required" if name == "s" else "none"))
    now = T0
    rows: dict = {}
    for intents, dt in batches:
        now += dt
        step = m.step(intents, now)
        rows.update({d.id: d for d in step.inserts})
        rows.update(step.updates)
    rebuilt = Machine(shard=0)
    for sku in m.skus.values():
        rebuilt.load_sku(Sku(**{k: getattr(sku, k) for k in sku.__dataclass_fields__}))
    for d in sorted(rows.values(), key=lambda d: d.decided_at_ms):
        rebuilt.load_decision(d)
        if d.status in ("reserved", "confirmed"):
            key = (d.sku, d.user_id)
            rebuilt.user_qty[key] = rebuilt.user_qty.get(key, 0) + d.qty
    fresh = [("s", "u1"), ("t", "u1"), ("t", "u2")]
    probe = [purchase(f"n{i}", sku=s, user=u) for i, (s, u) in enumerate(fresh)]
    probe += [purchase(pid) for pid in list(rows)[:3]]
    a = m.step(list(probe), now + 1)
    b = rebuilt.step(list(probe), now + 1)
    assert a.inserts == b.inserts and a.results == b.results and a.updates == b.updates


@pytest.mark.parametrize("field, value", [
    ("stock", 2**63), ("stock", -1), ("price_cents", 2**64 - 1), ("max_per_user", 0),
    ("reservation_ttl_s", 0), ("reservation_ttl_s", 2**40), ("sale_start_ms", 2**62),
    ("sale_end_ms", -(2**62)), ("draw_window_s", 3601),
])
def test_an_upsert_out_of_bounds_is_refused_and_changes_nothing(field: str, value: int):
    """A change that skipped make_upsert (an older CLI, a hand-made message) would fail its batch
    in Postgres on every redelivery: the writer refuses it, and the next intent goes on."""
    m = Machine(shard=0)
    m.step([SkuUpsert(request_id="r0", sku="n", stock=5, max_per_user=2)], T0)
    before = m.skus["n"].state()
    fields = {"stock": 5, field: value}
    step = m.step([SkuUpsert(request_id="r1", sku="n", **fields),
                   SkuUpsert(request_id="r2", sku="fresh", **fields),
                   purchase("a", sku="n")], T0)
    assert [(r.key, r.reason.startswith(f"{field} must be in")) for r in step.refusals] == [
        ("r1", True), ("r2", True)]
    assert step.admin_applied == [] and "fresh" not in m.skus
    assert m.skus["n"].state() == msgspec.structs.replace(before, sold=1)
    assert [d.status for d in step.results] == ["confirmed"]


def test_a_sale_that_would_end_before_it_starts_is_refused_whichever_change_brings_it():
    m = Machine(shard=0)
    m.step([SkuUpsert(request_id="r0", sku="n", stock=5, sale_start_ms=T0 + 10_000)], T0)
    step = m.step([SkuUpsert(request_id="r1", sku="n", stock=5, sale_end_ms=T0 + 10_000),
                   SkuUpsert(request_id="r2", sku="n", stock=5, sale_start_ms=T0 + 10_000,
                             sale_end_ms=T0 + 5_000),
                   SkuUpsert(request_id="r3", sku="n", stock=5, sale_end_ms=T0 + 10_001)], T0)
    assert [r.key for r in step.refusals] == ["r1", "r2"] and step.admin_applied == ["r3"]
    moved = m.step([SkuUpsert(request_id="r4", sku="n", stock=5, sale_start_ms=T0 + 20_000,
                              sale_end_ms=T0 + 30_000)], T0)
    assert moved.admin_applied == ["r4"]
    cleared = m.step([SkuUpsert(request_id="r5", sku="n", stock=5, sale_end_ms=T0 + 1,
                                clear=["sale_start_ms"])], T0)
    assert cleared.admin_applied == ["r5"] and m.skus["n"].sale_start_ms is None


def test_admin_upsert_clears_cap_and_window():
    m = Machine(shard=0)
    m.step([SkuUpsert(request_id="r1", sku="n", stock=5, max_per_user=1, sale_start_ms=T0,
                      sale_end_ms=T0 + 10)], T0)
    m.step([SkuUpsert(request_id="r2", sku="n", stock=5, clear=["max_per_user", "sale_end_ms", "stock"])], T0)
    sku = m.skus["n"]
    assert (sku.max_per_user, sku.sale_start_ms, sku.sale_end_ms, sku.stock) == (None, T0, None, 5)


def test_refuses_a_purchase_and_a_sku_change_for_another_shards_sku():
    """A sender routing by another shard count: the owner's SKU must not be created or overwritten
    here, and the purchase must not be decided here (its owner may yet)."""
    sku = next(f"x{i}" for i in range(100) if shard_of(f"x{i}", 2) == 1)
    m = Machine(shard=0, shards=2)
    step = m.step([SkuUpsert(request_id="r1", sku=sku, stock=60), purchase("p", sku=sku, qty=60)], T0)
    assert step.refusals == [Refusal(kind="sku_upsert", key="r1", reason=WRONG_SHARD),
                             Refusal(kind="purchase", key="p", reason=WRONG_SHARD)]
    assert step.foreign_skus == [sku, sku]
    assert not step.has_writes and step.results == [] and step.admin_applied == []
    assert m.skus == {} and "p" not in m.decisions


def test_a_machine_is_one_of_its_shard_count():
    with pytest.raises(ValueError):
        Machine(shard=2, shards=2)


def _state(m: Machine) -> tuple:
    return ({n: dataclasses.astuple(s) for n, s in m.skus.items()},
            dict(m.decisions), dict(m.reserved), {k: q for k, q in m.user_qty.items() if q},
            m.next_expiry_ms(), m.forgot_any,
            {n: (dict(d.entries), set(d.buyers), d.arrivals) for n, d in m.draws.items()})


# With a SKU sold by a draw ("d": its window opens at T0 + 1000 for 2 s).
drawn = st.builds(lambda i, u, dt: purchase(i, sku="d", user=u, at=T0 + dt), ids, users,
                  st.integers(0, 6000))
with_draws = st.lists(st.tuples(st.lists(st.one_of(intent, drawn), max_size=8),
                                st.integers(0, 2000)), max_size=25)


@settings(max_examples=300, deadline=None)
@given(before=with_draws, batch=st.lists(st.one_of(intent, drawn), max_size=8),
       dt=st.integers(0, 3000), seen_max=st.integers(2, 20))
def test_undo_puts_the_machine_back_as_it_was(before, batch, dt, seen_max):
    """A step taken back leaves the machine as if it had never run: the same state, and the
    same decisions for what comes next."""
    a, b = Machine(shard=0, seen_max=seen_max), Machine(shard=0, seen_max=seen_max)
    for m in (a, b):
        m.load_sku(Sku(sku="s", stock=3, max_per_user=2, payment="required", reservation_ttl_s=1))
        m.load_sku(Sku(sku="t", stock=3, max_per_user=2))
        m.load_sku(Sku(sku="d", stock=2, sale_start_ms=T0 + 1000, draw_window_s=2,
                       draw_seed="ab" * 32))
    now = T0
    for intents, step_dt in before:
        now += step_dt
        a.step(intents, now)
        b.step(intents, now)
    a.step(batch, now + dt)
    a.undo()
    assert _state(a) == _state(b)
    assert a.step(batch, now + dt) == b.step(batch, now + dt)
