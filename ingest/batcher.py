"""Group commit for intents: the intents of many buyers stored as ONE JetStream message.

With `sync_interval: always`, nats-server flushes its disk for every message it stores, one
after another per stream. Here the intents that arrive while a batch is being stored wait for
the next one, and a batch goes out packed into one message (`IntentBatch`): one disk flush and
one message for the server to index, however many buyers it holds. Nothing waits on purpose when
the server is idle: an intent that finds no batch in flight goes out at once. Under load (a
batch went out within the last `BUSY_WINDOW_S`), a batch waits `linger_ms` to fill before it
goes: fewer, larger batches, for a few milliseconds of latency.

A batch is all or nothing: stored (every caller learns its place, the message's stream sequence
and its index in it) or not (every caller gets Overloaded, a 503, and retries with the same key).
A stored batch's callers are answered once `followed` says this instance has read it back (its
purchases then have their place in the queue): one wait per batch, not one per caller; a
follower that cannot catch up does not hold them back, they are stored all the same.

Each caller waits at most `PUBLISH_TIMEOUT_S` (plus one sweep) from `store`, queueing included:
an intent still waiting for its batch's turn or its ack then is answered 503, and one still
queued is dropped. Without that, with the server paused, intents queued behind a batch waiting
for its ack would wait for that batch's timeout and then their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import msgspec

from flashsale.logs import kv
from ingest.errors import Overloaded
from ingest.publisher import PUBLISH_TIMEOUT_S, SWEEP_EVERY_S, Publisher
from proto.messages import Intent, IntentBatch, encode
from proto.streams import PACKED_BATCH_MAX
from proto.subjects import Names

log = logging.getLogger("ingest.batcher")

# Batches went out this recently: the shard is busy, and a batch may wait linger_ms to fill.
BUSY_WINDOW_S = 0.05


class Place(msgspec.Struct, frozen=True):
    """Where an intent is stored: its packed message's stream sequence and its index there."""

    seq: int
    index: int


async def _nothing_to_follow(shard: int, seq: int) -> None:
    return None


class _Item:
    __slots__ = ("deadline_s", "intent", "stored")

    def __init__(self, intent: Intent, deadline_s: float, stored: asyncio.Future[Place]) -> None:
        self.intent = intent
        self.deadline_s = deadline_s  # monotonic: its caller is answered (503) by then at the latest
        self.stored = stored


class IntentBatcher:
    """One queue per shard (a packed batch lives in one stream), one bound for all."""

    def __init__(
        self, publisher: Publisher, names: Names, shards: int, batch_max: int, linger_ms: float,
        batches_inflight_max: int, inflight_max: int,
        followed: Callable[[int, int], Awaitable[None]] = _nothing_to_follow,
    ) -> None:
        if not 1 <= batch_max <= PACKED_BATCH_MAX:
            raise ValueError(f"batch_max must be 1..{PACKED_BATCH_MAX}")
        self.publisher = publisher
        self.names = names
        self.batch_max = batch_max
        self.linger_s = linger_ms / 1000
        self.batches_inflight_max = batches_inflight_max  # per shard
        self.inflight_max = inflight_max
        self._followed = followed  # (shard, seq): returns once read back; Overloaded if it cannot be
        self._queues: dict[int, list[_Item]] = {shard: [] for shard in range(shards)}
        self._batches_inflight = dict.fromkeys(range(shards), 0)
        self._queued = 0
        self._sending = 0  # intents in batches on their way to the server
        self._wake = asyncio.Event()
        self._slot = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()  # made on the loop it serves, as its tasks are
        # Every item not answered yet, oldest (earliest deadline) first.
        self._unanswered: deque[_Item] = deque()
        self._task = asyncio.create_task(self._run())
        self._sweeper = asyncio.create_task(self._sweep())
        self._last_sent_s = 0.0  # monotonic time the last batches went out
        self.batches = 0
        self.intents = 0
        self.store_s = 0.0  # summed over batches: publish to the server's answer

    @property
    def inflight(self) -> int:
        """Intents waiting for their batch or for its ack."""
        return self._queued + self._sending

    def check_capacity(self) -> None:
        self.publisher.check_capacity()
        if self.inflight >= self.inflight_max:
            raise Overloaded("inflight_max")

    async def store(self, shard: int, intent: Intent) -> Place:
        """Store the intent in the shard's next packed batch: where it was stored, once it is
        stored and followed (or the follower is behind). Raises Overloaded (nothing stored, or
        not known to be)."""
        self.check_capacity()
        item = _Item(intent, time.monotonic() + PUBLISH_TIMEOUT_S, self._loop.create_future())
        self._queues[shard].append(item)
        self._unanswered.append(item)
        self._queued += 1
        self._wake.set()
        return await item.stored

    async def close(self) -> None:
        self._task.cancel()
        self._sweeper.cancel()
        for task in self._tasks:
            task.cancel()
        for queue in self._queues.values():
            _fail(queue, Overloaded("shutting_down"))
            queue.clear()
        self._queued = 0

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            busy = time.monotonic() - self._last_sent_s < BUSY_WINDOW_S
            if self.linger_s and busy and self._queued < self.batch_max:
                await asyncio.sleep(self.linger_s)
            self._last_sent_s = time.monotonic()
            for shard, queue in self._queues.items():
                while queue and self._batches_inflight[shard] < self.batches_inflight_max:
                    taken, self._queues[shard] = queue[: self.batch_max], queue[self.batch_max :]
                    queue = self._queues[shard]
                    self._queued -= len(taken)
                    batch = [item for item in taken if not item.stored.done()]  # not timed out
                    if not batch:
                        continue
                    self._sending += len(batch)
                    self._batches_inflight[shard] += 1
                    task = asyncio.create_task(self._send(shard, batch))
                    self._tasks.add(task)  # referenced until done: the loop keeps only weak refs
                    task.add_done_callback(self._tasks.discard)
            if self._queued:
                # Every slot of a shard with intents is busy: they go into its next batch.
                self._slot.clear()
                await self._slot.wait()
            else:
                self._wake.clear()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            self.expire(time.monotonic())

    def expire(self, now_s: float) -> int:
        """Answer 503 to every caller whose deadline passed (queued, or waiting for its batch's
        ack); how many. A queued one is then dropped when its shard's turn comes."""
        expired = 0
        unanswered = self._unanswered
        while unanswered and (unanswered[0].stored.done() or unanswered[0].deadline_s <= now_s):
            item = unanswered.popleft()
            if not item.stored.done():
                item.stored.set_exception(Overloaded("publish_timeout"))
                expired += 1
        return expired

    async def _send(self, shard: int, batch: list[_Item]) -> None:
        started_s = time.perf_counter()
        try:
            seq = await self._packed(shard, batch)
        finally:  # the shard's next batch may go while this one is followed
            self._batches_inflight[shard] -= 1
            self._sending -= len(batch)
            self.batches += 1
            self.intents += len(batch)
            self.store_s += time.perf_counter() - started_s
            self._slot.set()
        if seq is None:
            return
        try:
            await self._followed(shard, seq)
        except Overloaded:
            pass  # stored all the same: answered without a place in the queue
        for index, item in enumerate(batch):
            if not item.stored.done():
                item.stored.set_result(Place(seq, index))

    async def _packed(self, shard: int, batch: list[_Item]) -> int | None:
        """Publish the batch: its stream sequence, or None when its callers were answered."""
        batch_id = self.publisher.new_batch_id()
        payload = encode(IntentBatch(intents=[i.intent for i in batch]))
        try:
            seq = await self.publisher.publish(self.names.intent_batch(shard, batch_id), payload, batch_id)
        except Overloaded as exc:
            _fail(batch, exc)
            return None
        except Exception as exc:  # the connection broke mid-batch: nothing is known stored
            log.warning("intent batch failed", extra=kv(size=len(batch), error=repr(exc)))
            _fail(batch, Overloaded("publish_failed"))
            return None
        if not seq:  # its subject and id are new: "already stored" means a broken server
            _fail(batch, Overloaded("jetstream_refused"))
            return None
        return seq


def _fail(batch: list[_Item], exc: Overloaded) -> None:
    for item in batch:
        if not item.stored.done():
            item.stored.set_exception(Overloaded(exc.cause))
