"""Group commit for intents: the purchases of many buyers stored with one disk flush.

With `sync_interval: always`, nats-server flushes its disk for every message it stores, one
after another per stream: a few thousand purchases per second at best, whatever the rest does.
Here the intents that arrive while a batch is being stored wait for the next one, which goes out
as a JetStream atomic batch (nats-server 2.12+): every intent keeps its own subject (so one
message per purchase, the direct get by subject and the "already stored" answer all still
hold), and the server flushes once for the whole batch. Nothing waits on purpose when the
server is idle: an intent that finds no batch in flight goes out at once. Under load (a batch
went out within the last `BUSY_WINDOW_S`), a batch waits `linger_ms` to fill before it goes:
fewer, larger batches, so fewer disk flushes per purchase, for a few milliseconds of latency.

A batch is all or nothing. One that is refused because a subject already holds its intent (a
retry among new clicks) is stored again one intent at a time, so that each caller gets its own
answer; a batch that fails otherwise fails for all of its callers (503, and they retry with the
same key).

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
from dataclasses import dataclass, field

from flashsale.logs import kv
from ingest.publisher import (
    PUBLISH_TIMEOUT_S,
    SWEEP_EVERY_S,
    AtomicUnsupported,
    DuplicateInBatch,
    Overloaded,
    Publisher,
)
from proto.streams import BATCH_MAX_MESSAGES

log = logging.getLogger("ingest.batcher")

# Batches went out this recently: the shard is busy, and a batch may wait linger_ms to fill.
BUSY_WINDOW_S = 0.05


@dataclass(frozen=True, slots=True)
class _Item:
    subject: str
    payload: bytes
    msg_id: str
    deadline_s: float  # monotonic: its caller is answered (503) by then at the latest
    # The stream sequence it was stored at, or 0 when its subject already held an intent.
    stored: asyncio.Future[int] = field(compare=False)


class IntentBatcher:
    """One queue per shard (an atomic batch lives in one stream), one bound for all."""

    def __init__(
        self, publisher: Publisher, shards: int, batch_max: int, linger_ms: float,
        batches_inflight_max: int, inflight_max: int,
    ) -> None:
        if not 1 <= batch_max <= BATCH_MAX_MESSAGES:
            raise ValueError(f"batch_max must be 1..{BATCH_MAX_MESSAGES}")
        self.publisher = publisher
        self.batch_max = batch_max
        self.linger_s = linger_ms / 1000
        self.batches_inflight_max = batches_inflight_max  # per shard
        self.inflight_max = inflight_max
        self._queues: dict[int, list[_Item]] = {shard: [] for shard in range(shards)}
        self._batches_inflight = dict.fromkeys(range(shards), 0)
        self._queued = 0
        self._sending = 0  # intents in batches on their way to the server
        self._wake = asyncio.Event()
        self._slot = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # Every item not answered yet, oldest (earliest deadline) first.
        self._unanswered: deque[_Item] = deque()
        self._task = asyncio.create_task(self._run())
        self._sweeper = asyncio.create_task(self._sweep())
        self._last_sent_s = 0.0  # monotonic time the last batches went out
        self.atomic = True  # until a stream says it takes no atomic batches
        self.batches = 0
        self.intents = 0
        self.store_s = 0.0  # summed over batches: first publish to the server's answer

    @property
    def inflight(self) -> int:
        """Intents waiting for their batch or for its ack."""
        return self._queued + self._sending

    def check_capacity(self) -> None:
        self.publisher.check_capacity()
        if self.inflight >= self.inflight_max:
            raise Overloaded("inflight_max")

    async def store(self, shard: int, subject: str, payload: bytes, msg_id: str) -> int:
        """Like Publisher.publish: the stream sequence it was stored at, or 0 when the subject
        already holds its intent. Raises Overloaded (nothing stored, or not known to be)."""
        self.check_capacity()
        loop = asyncio.get_running_loop()
        item = _Item(subject, payload, msg_id, time.monotonic() + PUBLISH_TIMEOUT_S, loop.create_future())
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
            if len(batch) == 1 or not self.atomic:
                await self._one_by_one(batch)
            else:
                await self._atomic(batch)
        finally:
            self._batches_inflight[shard] -= 1
            self._sending -= len(batch)
            self.batches += 1
            self.intents += len(batch)
            self.store_s += time.perf_counter() - started_s
            self._slot.set()

    async def _atomic(self, batch: list[_Item]) -> None:
        try:
            last_seq = await self.publisher.publish_batch([(i.subject, i.payload, i.msg_id) for i in batch])
        except DuplicateInBatch:
            await self._one_by_one(batch)
            return
        except AtomicUnsupported as exc:
            # Correct, only slower: one flush per intent instead of one per batch.
            if self.atomic:
                log.warning("atomic batches unsupported: storing intents one by one",
                            extra=kv(error=str(exc)))
                self.atomic = False
            await self._one_by_one(batch)
            return
        except Overloaded as exc:
            _fail(batch, exc)
            return
        except Exception as exc:  # the connection broke mid-batch: nothing is known stored
            log.warning("intent batch failed", extra=kv(size=len(batch), error=repr(exc)))
            _fail(batch, Overloaded("publish_failed"))
            return
        first_seq = last_seq - len(batch) + 1
        for offset, item in enumerate(batch):
            if not item.stored.done():
                item.stored.set_result(first_seq + offset)

    async def _one_by_one(self, batch: list[_Item]) -> None:
        async def one(item: _Item) -> None:
            try:
                seq = await self.publisher.publish(item.subject, item.payload, item.msg_id)
            except Exception as exc:
                if not item.stored.done():
                    cause = exc if isinstance(exc, Overloaded) else Overloaded("publish_failed")
                    item.stored.set_exception(cause)
                return
            if not item.stored.done():
                item.stored.set_result(seq)

        await asyncio.gather(*(one(i) for i in batch))


def _fail(batch: list[_Item], exc: Overloaded) -> None:
    for item in batch:
        if not item.stored.done():
            item.stored.set_exception(Overloaded(exc.cause))
