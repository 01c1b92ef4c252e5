"""IntentBatcher against a small fake of a server that stopped answering: every caller is
answered by its deadline, queued behind a hung batch or not, and a timed-out intent still queued
is never sent. And against one that answers: a stored batch's callers are answered once its
follower has read it, or when the follower says it is behind, stored all the same."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest

from ingest.batcher import IntentBatcher
from ingest.errors import Overloaded
from ingest.publisher import PUBLISH_TIMEOUT_S, Publisher
from proto.messages import IntentBatch, Purchase, stored_decoder
from proto.subjects import Names


class HungServer:
    """A publisher whose packed batches get no answer until `answer` is set."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []  # the purchase ids of each packed message
        self.answer = asyncio.Event()

    def check_capacity(self) -> None:
        pass

    def new_batch_id(self) -> str:
        return f"b{len(self.sent)}"

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> int:
        batch = stored_decoder.decode(payload)
        assert isinstance(batch, IntentBatch)
        self.sent.append([i.id for i in batch.intents])
        await self.answer.wait()
        raise Overloaded("publish_timeout")


def purchase(pid: str) -> Purchase:
    return Purchase(id=pid, sku="s", qty=1, user_id="u", request_hash="h", accepted_at_ms=0)


def batcher_of(server: HungServer) -> IntentBatcher:
    return IntentBatcher(cast(Publisher, cast(Any, server)), Names("t"), shards=1, batch_max=10,
                         linger_ms=0, batches_inflight_max=1, inflight_max=1000)


async def test_callers_behind_a_hung_batch_are_answered_by_their_deadline():
    server = HungServer()
    batcher = batcher_of(server)
    try:
        first = asyncio.ensure_future(batcher.store(0, purchase("p0")))
        await asyncio.sleep(0.01)  # its batch goes out, and hangs
        later = [asyncio.ensure_future(batcher.store(0, purchase(f"p{n}"))) for n in range(1, 6)]
        await asyncio.sleep(0.01)
        assert server.sent == [["p0"]] and not any(t.done() for t in [first, *later])
        assert batcher.expire(time.monotonic()) == 0  # nobody is late yet
        assert batcher.expire(time.monotonic() + PUBLISH_TIMEOUT_S) == 6
        for task in [first, *later]:
            with pytest.raises(Overloaded) as exc:
                await task
            assert exc.value.cause == "publish_timeout"
        server.answer.set()  # the hung batch ends; the timed-out queued intents are not sent
        await asyncio.sleep(0.01)
        assert server.sent == [["p0"]] and batcher.inflight == 0
    finally:
        await batcher.close()


async def test_an_answered_caller_is_not_answered_again():
    server = HungServer()
    batcher = batcher_of(server)
    try:
        task = asyncio.ensure_future(batcher.store(0, purchase("p0")))
        await asyncio.sleep(0.01)
        server.answer.set()
        with pytest.raises(Overloaded):
            await task
        assert batcher.expire(time.monotonic() + PUBLISH_TIMEOUT_S) == 0
    finally:
        await batcher.close()


class Server:
    """A publisher that stores every packed batch at once: message n is sequence n."""

    def __init__(self) -> None:
        self.sent = 0

    def check_capacity(self) -> None:
        pass

    def new_batch_id(self) -> str:
        return f"b{self.sent}"

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> int:
        self.sent += 1
        return self.sent


@pytest.mark.parametrize("behind", [False, True])
async def test_a_stored_batch_is_answered_once_followed(behind):
    read = asyncio.Event()
    followed: list[tuple[int, int]] = []

    async def follower_reached(shard: int, seq: int) -> None:
        followed.append((shard, seq))
        await read.wait()
        if behind:
            raise Overloaded("intents_follower_behind")

    batcher = IntentBatcher(cast(Publisher, cast(Any, Server())), Names("t"), shards=1, batch_max=10,
                            linger_ms=0, batches_inflight_max=1, inflight_max=1000,
                            followed=follower_reached)
    try:
        callers = [asyncio.ensure_future(batcher.store(0, purchase(f"p{n}"))) for n in range(3)]
        await asyncio.sleep(0.01)
        assert followed == [(0, 1)] and not any(c.done() for c in callers)  # one wait, one batch
        read.set()
        places = [await c for c in callers]
        assert [(p.seq, p.index) for p in places] == [(1, 0), (1, 1), (1, 2)]
    finally:
        await batcher.close()
