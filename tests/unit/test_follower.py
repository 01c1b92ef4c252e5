"""The intents follower's waits and the read model's batched lookup, against small fakes: many
concurrent barriers ask the server once, a wait ends when the message is read (or times out),
and the sold-out path's lookups share one query."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest

from ingest import follower as follower_module
from ingest.errors import Overloaded
from ingest.follower import IntentsFollower
from ingest.queue import ShardQueues
from ingest.readmodel import ReadModel
from ingest.results import ResultsHub
from proto.messages import IntentBatch, Purchase, encode
from proto.subjects import Names


class FakePublisher:
    """Answers 'the stream's last sequence' after a round trip, counting the questions."""

    def __init__(self, last_seq: int) -> None:
        self.last_seq = last_seq
        self.asked = 0

    async def stream_last_seq(self, stream: str) -> int:
        self.asked += 1
        last_seq = self.last_seq  # what the stream held when the question arrived
        await asyncio.sleep(0.01)
        return last_seq


def follower(publisher: FakePublisher) -> tuple[IntentsFollower, ShardQueues]:
    queues = ShardQueues(2, 100, silence_s=3, silent_accept_max=10, now_s=time.monotonic())
    return IntentsFollower(cast(Any, None), cast(Any, publisher), Names("t"), 2, queues), queues


def message(seq: int, *intents: Purchase) -> Any:
    return SimpleNamespace(subject="t.intents.0.b.x", data=encode(IntentBatch(intents=list(intents))),
                           metadata=SimpleNamespace(sequence=SimpleNamespace(stream=seq)))


def buy(pid: str) -> Purchase:
    return Purchase(id=pid, sku="s", qty=1, user_id="u", request_hash="h", accepted_at_ms=0)


async def test_concurrent_barriers_ask_once_and_end_when_the_stream_is_read():
    publisher = FakePublisher(last_seq=2)
    f, queues = follower(publisher)
    barriers = [asyncio.create_task(f.barrier(0)) for _ in range(50)]
    await asyncio.sleep(0.05)
    assert publisher.asked == 1 and not any(b.done() for b in barriers)
    f._on_msg(0, message(1, buy("a")))
    await asyncio.sleep(0)
    assert not any(b.done() for b in barriers)
    f._on_msg(0, message(2, buy("b"), buy("c")))
    await asyncio.gather(*barriers)
    assert [queues.pending(p) is not None for p in "abc"] == [True] * 3
    # Asked after the answer came: a new question (an intent stored since must be seen).
    await f.barrier(0)
    assert publisher.asked == 2


async def test_a_wait_for_a_message_not_read_in_time_is_overload(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(follower_module, "FOLLOW_TIMEOUT_S", 0.05)
    f, _ = follower(FakePublisher(last_seq=0))
    with pytest.raises(Overloaded) as exc:
        await asyncio.gather(f.reached(1, 3), f.reached(1, 3))
    assert exc.value.cause == "intents_follower_behind"
    f._on_msg(1, message(3, buy("late")))
    await f.reached(1, 3)  # read now: no wait at all


async def test_a_barrier_joined_while_a_question_is_out_waits_for_a_question_of_its_own():
    publisher = FakePublisher(last_seq=0)
    f, _ = follower(publisher)
    first = asyncio.create_task(f.barrier(0))
    await asyncio.sleep(0.005)  # its question is out
    publisher.last_seq = 1  # stored meanwhile: the joiner must see it
    joined = [asyncio.create_task(f.barrier(0)) for _ in range(10)]
    await first
    await asyncio.sleep(0.02)
    assert publisher.asked == 2 and not any(j.done() for j in joined)
    joined[0].cancel()  # a caller that leaves takes nobody else with it
    f._on_msg(0, message(1, buy("a")))
    await asyncio.gather(*joined[1:])


async def test_back_to_back_questions_are_spaced_so_that_callers_share_them(monkeypatch):
    monkeypatch.setattr(follower_module, "BARRIER_SPACING_S", 0.05)
    publisher = FakePublisher(last_seq=0)
    asked_at: list[float] = []
    ask = publisher.stream_last_seq

    async def timed(stream: str) -> int:
        asked_at.append(time.monotonic())
        return await ask(stream)

    publisher.stream_last_seq = timed  # type: ignore[method-assign]
    f, _ = follower(publisher)
    await f.barrier(0)  # the first question goes out at once
    callers = []
    for _ in range(5):  # clicks arriving one by one while the next question waits its turn
        callers.append(asyncio.create_task(f.barrier(0)))
        await asyncio.sleep(0.005)
    await asyncio.gather(*callers)
    assert publisher.asked == 2 and asked_at[1] - asked_at[0] >= 0.05
    await asyncio.sleep(0.06)
    started = time.monotonic()
    await f.barrier(0)  # a quiet shard: asked at once
    assert publisher.asked == 3 and asked_at[2] - started < 0.04


@pytest.mark.parametrize("cause", ["publish_timeout", "no_stream", "intents_follower_behind"])
async def test_a_barrier_round_that_cannot_end_is_overload_for_its_callers(cause, monkeypatch):
    monkeypatch.setattr(follower_module, "PUBLISH_TIMEOUT_S", 0.05)
    monkeypatch.setattr(follower_module, "FOLLOW_TIMEOUT_S", 0.02)
    publisher = FakePublisher(last_seq=3)  # never read: the follower is behind
    f, _ = follower(publisher)
    if cause == "publish_timeout":
        publisher.stream_last_seq = lambda stream: asyncio.sleep(0.1, 3)  # type: ignore[method-assign]
    if cause == "no_stream":
        async def refused(stream: str) -> int:
            raise Overloaded("no_stream")
        publisher.stream_last_seq = refused  # type: ignore[method-assign]
    results = await asyncio.gather(*(f.barrier(1) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, Overloaded) and r.cause == cause for r in results), results
    publisher.stream_last_seq = FakePublisher(last_seq=0).stream_last_seq  # type: ignore[method-assign]
    monkeypatch.setattr(follower_module, "PUBLISH_TIMEOUT_S", 1.0)
    await f.barrier(1)  # the next round asks again


def test_messages_deleted_before_they_were_read_end_the_followed_ids_being_whole():
    f, queues = follower(FakePublisher(last_seq=0))
    f._on_msg(0, message(1, buy("a")))
    f._on_msg(0, message(2, buy("b")))
    f._on_msg(0, message(2, buy("b")))  # a resubscription overlapping the old one: no gap
    f._on_msg(1, message(1, buy("c")))
    assert queues.followed.whole
    f._on_msg(0, message(5, buy("e")))  # 3 and 4 were deleted before this follower read them
    assert not queues.followed.whole
    assert all(queues.followed.may_hold(p) for p in "abce")


def test_a_message_the_follower_cannot_read_ends_the_followed_ids_being_whole():
    f, queues = follower(FakePublisher(last_seq=0))
    f._on_msg(0, SimpleNamespace(subject="t.intents.0.b.y", data=b"\x00 not an intent batch",
                                 metadata=SimpleNamespace(sequence=SimpleNamespace(stream=1))))
    assert not queues.followed.whole
    f._on_msg(0, message(2, buy("a")))  # read on as before
    assert queues.pending("a") is not None


class FakePool:
    def __init__(self) -> None:
        self.queries: list[list[str]] = []

    async def fetch(self, sql: str, ids: list[str], **_: float) -> list[dict[str, Any]]:
        self.queries.append(list(ids))
        await asyncio.sleep(0.01)
        return [{"id": pid, "sku": "s", "user_id": "u", "qty": 1, "status": "confirmed",
                 "reason": None, "amount_cents": 0, "accepted_at_ms": 0, "decided_at_ms": 1,
                 "updated_at_ms": 1, "expires_at_ms": None, "request_hash": "h", "draw_rank": None}
                for pid in ids if pid.startswith("known")]


async def test_sold_out_lookups_share_one_query():
    pool = FakePool()
    hub = ResultsHub(cache_max=100, waiters_max=10)
    reads = ReadModel(Names("t"), 2, cast(Any, pool), cast(Any, None), hub, None)
    first = asyncio.create_task(reads.decided_purchase("new-0"))
    await asyncio.sleep(0)
    ids = ["known-1", *(f"new-{i}" for i in range(1, 40)), "known-1"]
    found = await asyncio.gather(*(reads.decided_purchase(pid) for pid in ids))
    assert await first is None
    assert [d.id if d else None for d in found] == ["known-1", *[None] * 39, "known-1"]
    assert len(pool.queries) == 2 and sorted(pool.queries[1]) == sorted(set(ids))
    assert hub.decision("known-1") is not None  # final: cached for the next retry
