"""Storing a purchase, or finding the one its key already made, against an in-memory intents
stream, its follower and purchases table (the real ResultsHub and ShardQueues): a new purchase
is stored once and queued; a retry of the same click, however it arrives (decided here, pending
here, in flight here, read in the stream, in Postgres), is that purchase and stores nothing; the
same key with another body is a 422 wherever the first use is seen; the sold-out fast path never
hides an accepted purchase; a retry whose first copy nobody can read is stored again (the writer
decides the id once), a twin whose first failed is a retryable 503, and a purchase stored while
its follower is behind is accepted all the same (the batcher's business: test_batcher_deadlines)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from config.settings import Settings
from ingest import problems
from ingest.batcher import Place
from ingest.create import _submit
from ingest.errors import Overloaded
from ingest.purchases import _check_cancellable
from ingest.queue import ShardQueues
from ingest.results import ResultsHub
from proto.ids import id_key, purchase_id
from proto.messages import Decision, Purchase, SkuState
from proto.sharding import shard_of

SHARDS = 2
SKU = "sneaker-42"
SHARD = shard_of(SKU, SHARDS)
KEY = "click-1"
PID = purchase_id(id_key("unit"), "alice", KEY)
CACHE_MAX = 100
SETTINGS = Settings(shards=SHARDS)


def intent(request_hash: str = "h-body-1") -> Purchase:
    return Purchase(id=PID, sku=SKU, qty=1, user_id="alice", request_hash=request_hash,
                    accepted_at_ms=1)


def decided(request_hash: str = "h-body-1", status: str = "confirmed") -> Decision:
    return Decision(id=PID, sku=SKU, user_id="alice", qty=1, status=status, reason=None,  # type: ignore[arg-type]
                    amount_cents=500, accepted_at_ms=1, decided_at_ms=2, updated_at_ms=2,
                    request_hash=request_hash)


class Stream:
    """The shard's intents stream, one message per store, and its follower: a stored intent is
    read (pending in `queues`) unless `unreadable` (nobody can read it: purged meanwhile)."""

    def __init__(self, queues: ShardQueues) -> None:
        self.queues = queues
        self.messages: list[Purchase] = []
        self.stores = 0
        self.unreadable = False
        self.gate: asyncio.Event | None = None  # store waits on it when set

    async def store(self, shard: int, intent: Purchase) -> Place:
        self.stores += 1
        if self.gate is not None:
            await self.gate.wait()
        self.messages.append(intent)
        seq = len(self.messages)
        if not self.unreadable:
            self.queues.stored(shard, seq, [intent])
        return Place(seq, 0)


class Reads:
    def __init__(self, queues: ShardQueues) -> None:
        self.queues = queues
        self.db: dict[str, Decision] = {}

    async def stored_intent(self, shard: int, pid: str, request_hash: str) -> Purchase | None:
        # After its barrier: the follower read what is there.
        return self.queues.pending(pid, request_hash)

    async def purchase_from_db(self, pid: str) -> Decision | None:
        return self.db.get(pid)

    async def sold_out_purchase(self, pid: str, sku: str) -> Decision | None:
        return self.db.get(pid)


def services() -> Any:
    queues = ShardQueues(SHARDS, CACHE_MAX, silence_s=60.0, silent_accept_max=CACHE_MAX,
                         now_s=time.monotonic())
    return SimpleNamespace(settings=SETTINGS, names=SETTINGS.names, submitting={},
                           batcher=Stream(queues), reads=Reads(queues),
                           hub=ResultsHub(CACHE_MAX, CACHE_MAX, queues=queues))


def forget_pending(svc: Any) -> None:
    """This instance did not store it (another did): only its follower knows it."""
    svc.hub.stored_here.clear()


async def submit(svc: Any, purchase: Purchase) -> Any:
    return await _submit(svc, purchase, KEY)


def sold_out(svc: Any) -> None:
    svc.hub.put_sku(SkuState(sku=SKU, stock=1, reserved=0, sold=1, price_cents=500, max_per_user=None,
                             payment="none", reservation_ttl_s=60, sale_start_ms=None, sale_end_ms=None))


def reused(exc: pytest.ExceptionInfo[problems.Rejection]) -> bool:
    return exc.value.status == 422 and exc.value.slug == "idempotency_key_reused"


async def test_a_new_purchase_is_stored_once_and_queued():
    svc = services()
    assert await submit(svc, intent()) == intent()
    assert svc.batcher.stores == 1 and svc.hub.stored_here[PID] == intent()
    assert svc.hub.queues.view(PID) is not None  # it has a place in its shard's queue
    assert svc.submitting == {}


async def test_a_retry_found_in_the_stream_is_that_purchase():
    svc = services()
    await submit(svc, intent())
    forget_pending(svc)
    assert await submit(svc, intent()) == intent()
    assert svc.batcher.stores == 1


async def test_a_retry_of_a_decided_purchase_stores_nothing():
    svc = services()
    svc.hub.put_decision(decided())
    assert await submit(svc, intent()) == decided()
    assert svc.batcher.stores == 0


async def test_a_retry_decided_since_is_answered_with_the_decision():
    svc = services()
    await submit(svc, intent())
    svc.reads.db[PID] = decided()  # decided by the writer; this instance has not heard yet
    forget_pending(svc)
    assert await submit(svc, intent()) == decided()


@pytest.mark.parametrize("first_use", ["decided_here", "pending_here", "in_stream", "in_postgres"])
async def test_the_key_with_another_body_is_a_422_wherever_its_first_use_is(first_use):
    svc = services()
    if first_use == "decided_here":
        svc.hub.put_decision(decided("h-body-1"))
    elif first_use == "pending_here":
        svc.hub.stored(intent("h-body-1"))
    elif first_use == "in_stream":
        await submit(svc, intent("h-body-1"))
        forget_pending(svc)
    else:
        # The key's first use, with a SKU of another shard, was decided there; this body's
        # intent is in this shard's stream too (stored before), and this is its retry.
        await submit(svc, intent("h-body-2"))
        forget_pending(svc)
        svc.reads.db[PID] = decided("h-body-1")
    stores_before = svc.batcher.stores
    with pytest.raises(problems.Rejection) as refused:
        await submit(svc, intent("h-body-2"))
    assert reused(refused)
    assert svc.batcher.stores == stores_before  # refused before anything is stored


async def test_sold_out_refuses_a_new_purchase_without_storing_it():
    svc = services()
    sold_out(svc)
    with pytest.raises(problems.Rejection) as refused:
        await submit(svc, intent())
    assert refused.value.status == 409 and refused.value.slug == "sold_out"
    assert svc.batcher.stores == 0
    assert refused.value.headers == {"Idempotency-Key": KEY}


async def test_sold_out_still_answers_a_retry_of_an_accepted_purchase():
    svc = services()
    await submit(svc, intent())
    forget_pending(svc)
    sold_out(svc)
    assert await submit(svc, intent()) == intent()
    svc.hub.queues.decided(PID)
    svc.reads.db[PID] = decided()  # decided long ago: Postgres answers the retry
    assert await submit(svc, intent()) == decided()
    assert svc.batcher.stores == 1


async def test_a_retry_whose_first_copy_nobody_can_read_is_stored_again():
    svc = services()
    svc.batcher.unreadable = True
    await submit(svc, intent())
    forget_pending(svc)
    assert await submit(svc, intent()) == intent()
    assert svc.batcher.stores == 2  # two copies of one id: the writer decides it once


async def test_twins_at_once_store_one_purchase_and_get_one_answer():
    svc = services()
    svc.batcher.gate = asyncio.Event()
    first = asyncio.create_task(_submit(svc, intent(), KEY))
    await asyncio.sleep(0)
    assert PID in svc.submitting
    twin = asyncio.create_task(_submit(svc, intent(), KEY))
    with pytest.raises(problems.Rejection) as refused:  # another body: refused at once
        await _submit(svc, intent("h-body-2"), KEY)
    assert reused(refused)
    svc.batcher.gate.set()
    assert await first == await twin == intent()
    assert svc.batcher.stores == 1 and svc.submitting == {}


async def test_a_twin_whose_first_failed_is_a_retryable_503():
    svc = services()
    svc.batcher.gate = asyncio.Event()

    async def failing_store(shard: int, *rest: Any) -> Place:
        await svc.batcher.gate.wait()
        raise Overloaded("inflight_max")

    svc.batcher.store = failing_store
    first = asyncio.create_task(_submit(svc, intent(), KEY))
    await asyncio.sleep(0)
    twin = asyncio.create_task(_submit(svc, intent(), KEY))
    await asyncio.sleep(0)
    svc.batcher.gate.set()
    with pytest.raises(Overloaded):
        await first
    with pytest.raises(Overloaded) as shed:
        await twin
    assert shed.value.cause == "intent_missing"  # nothing stored: the client retries
    assert svc.submitting == {}


def test_a_confirmed_or_rejected_purchase_cannot_be_cancelled():
    for status in ("confirmed", "rejected"):
        with pytest.raises(problems.Rejection) as exc:
            _check_cancellable("p_1", status, None)
        assert exc.value.status == 409 and exc.value.slug == "cannot_cancel"
    _check_cancellable("p_1", "reserved", None)  # a reservation can be given back
