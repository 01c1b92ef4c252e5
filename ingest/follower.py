"""The intents-stream follower: every ingest instance reads every shard's intents, in order.

Intents are packed many to a message (`IntentBatch`), so no purchase has a subject of its own
to look up. Instead each instance follows each shard's intents stream with an ordered push
consumer (ephemeral, gap-free, no acks) and feeds what it reads to `ShardQueues`: which purchases
are pending (stored by any instance, not decided yet) and where each stands in its queue.

A purchase acknowledged anywhere before a read must be seen by that read: `barrier(shard)` asks
the stream for its last sequence and waits until the follower has read that far. Concurrent
barriers of a shard share one question to the server, and under load questions are spaced
(BARRIER_SPACING_S) so that more callers share each.

The follower starts at the first intent the shard's writer has not acknowledged (everything
before it is decided, hence in Postgres); after a reconnect it resumes after the last message
it read. It also remembers every purchase id it reads (`ShardQueues.followed`): after a
barrier, an id never read here was never stored since the follower started, unless a message
was deleted before the follower reached it, which it notices (a gap in the stream sequence).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from flashsale.jetstream import unsubscribe_quietly
from flashsale.logs import kv
from ingest.errors import OverloadCause, Overloaded
from ingest.publisher import PUBLISH_TIMEOUT_S, Publisher
from ingest.queue import ShardQueues
from proto.messages import stored_decoder, unpacked
from proto.subjects import Names

log = logging.getLogger("ingest.follower")

HEARTBEAT_S = 2.0
# A barrier or a wait for the follower to read a message gives up after this long (a 503 for
# the request: the client retries with the same key).
FOLLOW_TIMEOUT_S = 2.0
RESUBSCRIBE_BACKOFF_MAX_S = 2.0
# A barrier's question goes out at most this soon after the shard's previous one: under load
# (the sold-out path asks for every click) the callers of those 2 ms share one question instead
# of one each, which costs ingest a socket write and nats-server a stream info apiece.
BARRIER_SPACING_S = 0.002


class _Shard:
    def __init__(self) -> None:
        self.read_seq = 0  # the last stream sequence read
        self.sub: JetStreamContext.PushSubscription | None = None
        # Futures of waits for the follower to reach a sequence, by that sequence.
        self.reaching: dict[int, asyncio.Future[None]] = {}
        # The next barrier round (None: nobody waits for one yet): its callers are answered
        # once a question for the stream's last sequence, sent after they joined, is answered
        # and the follower has read that far. And whether a question is on its way now.
        self.next_round: asyncio.Future[None] | None = None
        self.asking = False
        self.asked_at_s = float("-inf")  # monotonic time the last question went out


class IntentsFollower:
    def __init__(self, js: JetStreamContext, publisher: Publisher, names: Names, shards: int,
                 queues: ShardQueues) -> None:
        self.js = js
        self.publisher = publisher
        self.names = names
        self.queues = queues
        self._shards = [_Shard() for _ in range(shards)]
        self._resubscribing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def following(self) -> bool:
        return all(s.sub is not None for s in self._shards)

    async def start(self) -> None:
        for shard in range(len(self._shards)):
            await self._subscribe(shard)

    async def stop(self) -> None:
        if self._resubscribing is not None:
            self._resubscribing.cancel()
        for task in self._tasks:
            task.cancel()
        for s in self._shards:
            await unsubscribe_quietly(s.sub)
            s.sub = None
            for fut in [*s.reaching.values(), *([s.next_round] if s.next_round else [])]:
                if not fut.done():
                    fut.cancel()

    # -- reading -------------------------------------------------------------------------------

    async def _start_seq(self, shard: int) -> int:
        """Where to start reading: after the last message read, or at the first intent the
        shard's writer has not acknowledged (everything before is decided, and counts as read)."""
        read_seq = self._shards[shard].read_seq
        if read_seq:
            return read_seq + 1
        stream = self.names.intents_stream(shard)
        first_seq = (await self.js.stream_info(stream)).state.first_seq
        try:
            info = await self.js.consumer_info(stream, self.names.committer_durable(shard))
            floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
        except nats.js.errors.NotFoundError:
            floor = 0  # no writer has run yet: nothing is decided
        return max(floor + 1, first_seq, 1)

    async def _subscribe(self, shard: int) -> None:
        start_seq = await self._start_seq(shard)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq)

        async def on_msg(msg: Msg) -> None:
            self._on_msg(shard, msg)

        s = self._shards[shard]
        # Counted as read before the first message can arrive: what comes next is start_seq.
        s.read_seq = max(s.read_seq, start_seq - 1)
        s.sub = await self.js.subscribe(
            self.names.intents_of_shard(shard), stream=self.names.intents_stream(shard), cb=on_msg,
            ordered_consumer=True, config=config, idle_heartbeat=HEARTBEAT_S,
        )
        self._resolve(s)

    def _on_msg(self, shard: int, msg: Msg) -> None:
        try:
            seq = msg.metadata.sequence.stream
        except nats.errors.NotJSMessageError:
            return  # not from the consumer (cannot happen on this subscription)
        s = self._shards[shard]
        if seq <= s.read_seq:
            return  # read already (a resubscription overlapping the old one)
        if seq != s.read_seq + 1 and self.queues.followed.whole:
            # Deleted before this follower read them (purged or aged out): the ids they held
            # are unknown here, so the sold-out path asks Postgres about every id from now on.
            log.warning("intents follower skipped messages",
                        extra=kv(shard=shard, first_seq=s.read_seq + 1, last_seq=seq - 1))
            self.queues.skipped()
        try:
            intents = unpacked(stored_decoder.decode(msg.data))
        except msgspec.DecodeError:
            # Its ids are unknown here too (a writer of a newer version may decide them).
            log.error("undecodable intents message", extra=kv(subject=msg.subject, seq=seq))
            self.queues.skipped()
            intents = []
        self.queues.stored(shard, seq, intents)
        s.read_seq = seq
        self._resolve(s)

    @staticmethod
    def _resolve(s: _Shard) -> None:
        if s.reaching:
            for reached in [q for q in s.reaching if q <= s.read_seq]:
                fut = s.reaching.pop(reached)
                if not fut.done():
                    fut.set_result(None)

    async def reached(self, shard: int, seq: int) -> None:
        """Returns once the follower has read the shard's stream up to `seq`. Raises Overloaded
        after FOLLOW_TIMEOUT_S. The callers waiting for one sequence share one future and one
        timer (a whole batch of purchases waits for its message)."""
        s = self._shards[shard]
        if s.read_seq >= seq:
            return
        await asyncio.shield(_reaching(s, seq))

    async def barrier(self, shard: int) -> None:
        """Returns once everything the shard's stream held when this was called has been read:
        a purchase acknowledged anywhere before is known (pending) or decided by then. Raises
        Overloaded when that takes PUBLISH_TIMEOUT_S. Concurrent callers share one round: one
        question to the server, one future, one timer (the sold-out path waits here for every
        click)."""
        s = self._shards[shard]
        fut = s.next_round
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = s.next_round = loop.create_future()
            timer = loop.call_later(PUBLISH_TIMEOUT_S, _fail, fut, "publish_timeout")
            fut.add_done_callback(lambda _: timer.cancel())
            if not s.asking:
                task = asyncio.create_task(self._ask(shard))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        await asyncio.shield(fut)

    async def _ask(self, shard: int) -> None:
        """Start every waiting round with one request sent after its callers joined it."""
        s = self._shards[shard]
        s.asking = True
        try:
            while s.next_round is not None:
                wait_s = s.asked_at_s + BARRIER_SPACING_S - time.monotonic()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)  # whoever comes meanwhile joins this round
                fut, s.next_round = s.next_round, None
                s.asked_at_s = time.monotonic()
                try:
                    last_seq = await self.publisher.stream_last_seq(self.names.intents_stream(shard))
                except Overloaded as exc:
                    _fail(fut, exc.cause)
                    continue
                except Exception as exc:
                    _fail(fut, "jetstream_refused")
                    log.warning("stream last sequence failed", extra=kv(shard=shard, error=repr(exc)))
                    continue
                if s.read_seq >= last_seq:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    _reaching(s, last_seq).add_done_callback(functools.partial(_pass_on, fut))
        finally:
            s.asking = False

    # -- reconnects ----------------------------------------------------------------------------

    def on_reconnected(self) -> None:
        """The server may have restarted and lost the in-memory consumers: make new ones."""
        if self._resubscribing is None or self._resubscribing.done():
            self._resubscribing = asyncio.create_task(self._resubscribe())

    async def _resubscribe(self) -> None:
        for shard, s in enumerate(self._shards):
            old, s.sub = s.sub, None
            await unsubscribe_quietly(old)
            delay_s = 0.1
            failing = False
            while s.sub is None:
                try:
                    await self._subscribe(shard)
                    log.info("intents follower resubscribed", extra=kv(shard=shard, from_seq=s.read_seq + 1))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not failing:  # one line per state change, not one per retry
                        log.warning("intents resubscribe failing, retrying",
                                    extra=kv(shard=shard, error=repr(exc)))
                        failing = True
                    await asyncio.sleep(delay_s)
                    delay_s = min(delay_s * 2, RESUBSCRIBE_BACKOFF_MAX_S)


def _reaching(s: _Shard, seq: int) -> asyncio.Future[None]:
    """The wait for the follower to read the shard's stream up to `seq`, shared by everyone who
    waits for that sequence; it fails after FOLLOW_TIMEOUT_S."""
    fut = s.reaching.get(seq)
    if fut is None:
        loop = asyncio.get_running_loop()
        fut = s.reaching[seq] = loop.create_future()
        timer = loop.call_later(FOLLOW_TIMEOUT_S, _behind, s, seq)
        fut.add_done_callback(lambda _: timer.cancel())
    return fut


def _pass_on(fut: asyncio.Future[None], read: asyncio.Future[None]) -> None:
    """A barrier round ends as the wait for its sequence did (unless its own timer ended it)."""
    if fut.done():
        return
    if read.cancelled():
        fut.cancel()
    elif (exc := read.exception()) is not None:
        fut.set_exception(exc)
        fut.add_done_callback(_retrieve)
    else:
        fut.set_result(None)


def _fail(fut: asyncio.Future[None], cause: OverloadCause) -> None:
    if not fut.done():
        fut.set_exception(Overloaded(cause))
        fut.add_done_callback(_retrieve)


def _behind(s: _Shard, seq: int) -> None:
    fut = s.reaching.pop(seq, None)
    if fut is not None and not fut.done():
        fut.set_exception(Overloaded("intents_follower_behind"))
        fut.add_done_callback(_retrieve)


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()
