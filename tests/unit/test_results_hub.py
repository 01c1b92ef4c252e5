"""The results hub: the bounded caches and the waiters it wakes (pure, no NATS)."""

from __future__ import annotations

import asyncio

from ingest.results import Awaits, ResultsHub, is_decided, is_final, newer, status_of
from proto.messages import Decision, Purchase, Refusal, ResultBatch, SkuState


def decision(pid: str, status: str = "confirmed", updated_at_ms: int = 10) -> Decision:
    return Decision(
        id=pid, sku="hot", user_id="u", qty=1, status=status, reason=None,  # type: ignore[arg-type]
        amount_cents=100, accepted_at_ms=1, decided_at_ms=updated_at_ms, updated_at_ms=updated_at_ms,
    )


def sku(remaining: int, reserved: int = 0) -> SkuState:
    return SkuState(sku="hot", stock=10, reserved=reserved, sold=10 - remaining - reserved,
                    price_cents=100, max_per_user=None, payment="none", reservation_ttl_s=600,
                    sale_start_ms=None, sale_end_ms=None)


PENDING = Purchase(id="p1", sku="hot", qty=1, user_id="u", request_hash="h", accepted_at_ms=1)


def test_states_of_a_purchase():
    assert status_of(PENDING) == "pending" and not is_decided(PENDING) and not is_final(PENDING)
    reserved = decision("p1", "reserved")
    assert is_decided(reserved) and not is_final(reserved)
    assert is_final(decision("p1", "expired"))


def test_newer_keeps_the_latest_update():
    old, new = decision("p1", "reserved", 10), decision("p1", "confirmed", 20)
    assert newer(PENDING, old) is old
    assert newer(old, new) is new
    assert newer(new, old) is new
    assert newer(new, None) is new


def test_decision_cache_is_bounded_and_ignores_stale_copies():
    hub = ResultsHub(cache_max=2, waiters_max=10)
    hub.apply(ResultBatch(shard=0, epoch=1, decisions=[decision("a", "reserved", 20)]))
    hub.put_decision(decision("a", "confirmed", 10))  # an older copy, e.g. read from Postgres
    assert hub.decision("a").status == "reserved"
    hub.put_decision(decision("b"))
    hub.put_decision(decision("c"))
    assert hub.decision("a") is None and hub.decision("c") is not None


def test_only_final_rows_from_postgres_are_cached():
    hub = ResultsHub(cache_max=10, waiters_max=10)
    hub.remember_final(decision("a", "reserved"))
    hub.remember_final(decision("b", "confirmed"))
    assert hub.decision("a") is None and hub.decision("b") is not None


def test_sold_out_only_when_nothing_is_reserved_either():
    hub = ResultsHub(cache_max=10, waiters_max=10)
    assert not hub.is_sold_out("hot")
    hub.put_sku(sku(remaining=0, reserved=1))
    assert not hub.is_sold_out("hot")  # an expiry may give it back
    hub.apply(ResultBatch(shard=0, epoch=1, skus=[sku(remaining=0)]))
    assert hub.is_sold_out("hot")


def test_a_row_from_postgres_never_overwrites_a_streamed_sku_state():
    hub = ResultsHub(cache_max=10, waiters_max=10)
    hub.put_sku(sku(remaining=0))
    hub.remember_sku(sku(remaining=5))
    assert hub.skus["hot"].remaining == 0


async def test_a_watch_wakes_on_its_decision_and_is_released():
    hub = ResultsHub(cache_max=10, waiters_max=10)
    with hub.watching("p1", enabled=True) as watch:
        assert watch is not None and hub.watch_count == 1
        waiting = asyncio.create_task(watch.until(PENDING, is_decided, wait_s=5))
        await asyncio.sleep(0)
        hub.apply(ResultBatch(shard=0, epoch=1, decisions=[decision("p1", "confirmed")]))
        assert status_of(await waiting) == "confirmed"
    assert hub.watch_count == 0 and "p1" not in hub.watches


async def test_a_wait_ends_at_its_deadline_with_the_state_it_had():
    hub = ResultsHub(cache_max=10, waiters_max=10)
    with hub.watching("p1", enabled=True) as watch:
        assert watch is not None
        assert await watch.until(PENDING, is_decided, wait_s=0.01) is PENDING


async def test_a_refusal_ends_only_the_wait_of_the_intent_it_refused():
    hub = ResultsHub(cache_max=10, waiters_max=10)
    cancel, buy, read = Awaits(kind="cancel"), Awaits(kind="purchase", request_hash="h2"), None
    with hub.watching("p1", True, awaits=cancel) as canceller, \
            hub.watching("p1", True, awaits=buy) as buyer, hub.watching("p1", True, awaits=read) as reader:
        assert canceller is not None and buyer is not None and reader is not None
        waits = [asyncio.create_task(w.until(PENDING, is_final, wait_s=0.2))
                 for w in (canceller, buyer, reader)]
        await asyncio.sleep(0)
        # The gateway's confirm refused (the buyer's cancel won), and the first use's purchase
        # intent refused on another shard: neither is an answer to any of these three.
        hub.apply(ResultBatch(shard=0, epoch=1, refusals=[
            Refusal(kind="confirm", key="p1", reason="not_reserved", status="cancelled"),
            Refusal(kind="purchase", key="p1", reason="idempotency_key_reused", request_hash="h1")]))
        await asyncio.sleep(0.01)
        assert not any(w.done() for w in waits)
        hub.apply(ResultBatch(shard=1, epoch=1, refusals=[
            Refusal(kind="purchase", key="p1", reason="idempotency_key_reused", request_hash="h2"),
            Refusal(kind="cancel", key="p1", reason="not_reserved", status="confirmed")]))
        assert await waits[0] is PENDING and canceller.refusal.kind == "cancel"  # type: ignore[union-attr]
        assert await waits[1] is PENDING and buyer.refusal.request_hash == "h2"  # type: ignore[union-attr]
        assert await waits[2] is PENDING and reader.refusal is None  # waited its full time


def test_a_purchase_stored_here_is_pending_until_decided_or_refused():
    hub = ResultsHub(cache_max=10, waiters_max=10)
    for pid in ("p1", "p2"):
        hub.stored(Purchase(id=pid, sku="hot", qty=1, user_id="u", request_hash="h1", accepted_at_ms=0))
    assert set(hub.stored_here) == {"p1", "p2"}
    hub.apply(ResultBatch(shard=0, epoch=1, decisions=[decision("p1", "confirmed")], refusals=[
        Refusal(kind="purchase", key="p2", reason="idempotency_key_reused", request_hash="other")]))
    assert set(hub.stored_here) == {"p2"}  # another request's intent refused: this one still pending
    hub.apply(ResultBatch(shard=0, epoch=1, refusals=[
        Refusal(kind="purchase", key="p2", reason="idempotency_key_reused", request_hash="h1")]))
    assert not hub.stored_here
    hub.stored(Purchase(id="p1", sku="hot", qty=1, user_id="u", request_hash="h1", accepted_at_ms=0))
    assert not hub.stored_here  # decided already


async def test_waiters_are_bounded():
    hub = ResultsHub(cache_max=10, waiters_max=1)
    with hub.watching("p1", enabled=True) as first, hub.watching("p2", enabled=True) as second:
        assert first is not None and second is None
    with hub.watching("p1", enabled=False) as off:
        assert off is None and hub.watch_count == 0


async def test_admin_waits_get_the_applied_state_or_the_refusal():
    hub = ResultsHub(cache_max=10, waiters_max=10)
    applied, refused = hub.admin_wait("r1", "hot"), hub.admin_wait("r2", "hot")
    assert applied is not None and refused is not None
    hub.apply(ResultBatch(shard=0, epoch=1, skus=[sku(remaining=3)], admin_applied=["r1"],
                          refusals=[Refusal(kind="sku_upsert", key="r2", reason="below sold")]))
    assert (await applied.fut).remaining == 3  # type: ignore[union-attr]
    assert isinstance(await refused.fut, Refusal)
    hub.admin_done("r1")
    assert "r1" not in hub.admin_waits
