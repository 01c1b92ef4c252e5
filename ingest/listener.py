"""The results-stream listener: every committed batch of every shard, fed to the ResultsHub.

An ordered push consumer: ephemeral, gap-free (nats-py resets it on a missed sequence or missed
heartbeats), no acks. From "now" at start, since older decisions are in Postgres; after a
reconnect, from the first batch not seen yet.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from flashsale.jetstream import unsubscribe_quietly
from flashsale.logs import kv
from ingest.results import ResultsHub
from proto.messages import progress_decoder, result_decoder
from proto.subjects import Names

log = logging.getLogger("ingest.listener")

# A listener that misses two heartbeats is recreated by nats-py from the last sequence seen.
HEARTBEAT_S = 2.0
RESUBSCRIBE_BACKOFF_MIN_S = 0.1  # doubling up to the max while the server refuses
RESUBSCRIBE_BACKOFF_MAX_S = 2.0
# Every live writer sends a result batch or a heartbeat about every second, and writers announce
# each batch they take on core NATS: a listener that hears those but no result for this long
# has lost its consumer (its stream was failed over, say) and makes a new one.
STALE_S = 5.0


class ResultsListener:
    def __init__(self, nc: NATS, js: JetStreamContext, names: Names, hub: ResultsHub) -> None:
        self.nc = nc
        self.js = js
        self.names = names
        self.hub = hub
        self.last_seq = 0  # stream sequence of the last result batch received
        self._sub: JetStreamContext.PushSubscription | None = None  # None: not listening
        self._resubscribing: asyncio.Task[None] | None = None
        self._last_result_s = time.monotonic()
        self._last_progress_s = 0.0
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._sub is not None

    async def start(self) -> None:
        # The writers' "taken up to" announcements: core NATS, so they survive a reconnect
        # without a new consumer (nats-py resubscribes core subscriptions itself).
        await self.nc.subscribe(self.names.progress_all(), cb=self._on_progress)
        await self._subscribe()
        self._watchdog = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(STALE_S / 2)
            now_s = time.monotonic()
            writers_alive = now_s - self._last_progress_s < STALE_S
            if writers_alive and now_s - self._last_result_s > STALE_S and self.nc.is_connected:
                log.warning("results listener stale: resubscribing", extra=kv(from_seq=self.last_seq + 1))
                self._last_result_s = now_s  # one attempt per stale period
                self.on_reconnected()

    async def _on_progress(self, msg: Msg) -> None:
        try:
            progress = progress_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        self._last_progress_s = time.monotonic()
        self.hub.queues.taken(progress.shard, progress.taken_seq, self._last_progress_s)

    async def _subscribe(self) -> None:
        if self.last_seq:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                    opt_start_seq=self.last_seq + 1)
        else:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        self._sub = await self.js.subscribe(
            self.names.results_all(), stream=self.names.results_stream, cb=self._on_msg,
            ordered_consumer=True, config=config, idle_heartbeat=HEARTBEAT_S,
        )

    def on_reconnected(self) -> None:
        """The server may have restarted and lost the in-memory consumer: make a new one."""
        if self._resubscribing is None or self._resubscribing.done():
            self._resubscribing = asyncio.create_task(self._resubscribe())

    async def _resubscribe(self) -> None:
        old, self._sub = self._sub, None
        await unsubscribe_quietly(old)
        delay_s = RESUBSCRIBE_BACKOFF_MIN_S
        failing = False
        while True:
            try:
                await self._subscribe()
                log.info("results listener resubscribed", extra=kv(from_seq=self.last_seq + 1))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:  # one line per state change, not one per retry
                    log.warning("results resubscribe failing, retrying", extra=kv(error=repr(exc)))
                    failing = True
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RESUBSCRIBE_BACKOFF_MAX_S)

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._resubscribing is not None:
            self._resubscribing.cancel()
        await unsubscribe_quietly(self._sub)
        self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        self._last_result_s = time.monotonic()
        try:
            self.last_seq = max(self.last_seq, msg.metadata.sequence.stream)
        except nats.errors.NotJSMessageError:
            pass  # not from the consumer (cannot happen on this subscription); still decode it
        try:
            batch = result_decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.error("undecodable result batch", extra=kv(subject=msg.subject, size=len(msg.data)))
            return
        self.hub.apply(batch)
