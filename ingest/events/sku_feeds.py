"""SKU event feeds: one per SKU, re-read from the hub every `sku_events_interval_ms`, encoded
once and written to every listener's transport by the feed itself; a listener that falls
SKU_STREAM_BACKLOG_MAX_BYTES behind is dropped. A SKU stream holds a wait of its client
(edge.waits.WaitBudget) like a long-poll, and a place among the process's `sku_streams_max`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from aiohttp import web

from ingest import metrics, problems
from ingest.edge.refusals import note_refusal
from ingest.edge.waits import WaitBudget
from ingest.events.sse import HEARTBEAT_FRAMES, Frames, sku_event
from ingest.results import ResultsHub
from proto.messages import SkuState

# A SKU stream whose client has this much unread (queued in its transport) is dropped: a reader
# that does not keep up must not make the feed hold its messages in memory.
SKU_STREAM_BACKLOG_MAX_BYTES = 64 * 1024
Ending = Literal["gone", "slow"]


class Streams:
    """The event streams this instance holds: the SKU feeds, their count, and the signal that
    ends every stream when the server shuts down.

    A SKU stream is a place on its SKU's feed: at most `sku_streams_max` in the process (503),
    and counted with the long-polls and purchase streams of its client (`edge.waits.WaitBudget`, 429)."""

    def __init__(self, sku_streams_max: int, waits: WaitBudget, interval_s: float,
                 heartbeat_s: float, retry_after_s: int) -> None:
        self.sku_streams_max = sku_streams_max
        self.waits = waits
        self.interval_s = interval_s
        self.heartbeat_s = heartbeat_s
        self.retry_after_s = retry_after_s
        self.sku_streams = 0
        self.feeds: dict[str, SkuFeed] = {}
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @contextmanager
    def place(self, hub: ResultsHub, state: SkuState, client: str) -> Iterator[SkuFeed]:
        """A place on the SKU's feed for the duration of a request: 503 beyond sku_streams_max,
        429 when `client` holds its share of waits already."""
        if self.sku_streams >= self.sku_streams_max:
            note_refusal("sku_streams_total", client)
            raise problems.Rejection(
                503, "too_many_streams", "Too many event streams",
                f"this instance holds {self.sku_streams_max} SKU event streams already",
                retry_after_s=self.retry_after_s,
            )
        self.waits.acquire(client, None)
        feed = self.feeds.get(state.sku)
        if feed is None:
            feed = self.feeds[state.sku] = SkuFeed(hub, state, self.interval_s, self.heartbeat_s)
        feed.places += 1
        self.sku_streams += 1
        metrics.EVENT_STREAMS.labels("sku").inc()
        try:
            yield feed
        finally:
            self.sku_streams -= 1
            metrics.EVENT_STREAMS.labels("sku").dec()
            self.waits.release(client, None)
            feed.places -= 1
            if not feed.places:
                feed.stop()
                del self.feeds[state.sku]

    def close(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        for feed in self.feeds.values():
            feed.stop()


class Listener:
    """One SKU stream as its feed writes to it: the connection's transport, and `ended`, which
    the feed completes when the client has gone or reads too slowly."""

    __slots__ = ("chunked", "ended", "transport")

    def __init__(self, transport: asyncio.Transport, chunked: bool) -> None:
        self.transport = transport
        self.chunked = chunked
        self.ended: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()

    def write(self, frames: Frames) -> None:
        self.transport.write(frames.chunked if self.chunked else frames.raw)

    def end(self, why: Ending) -> None:
        if not self.ended.done():
            self.ended.set_result(why)


class SkuFeed:
    """One SKU's latest event, re-read from the hub every `interval_s` while anyone listens,
    encoded once and written by the feed itself to every listener's transport in the same
    tick: no task wakes per stream, no await per write (a write that cannot go out at once
    is queued by the transport). A tick's work is one pass over the listeners: each gets the
    same bytes, a heartbeat after `heartbeat_s` of silence, or is ended (its client gone, or
    more than SKU_STREAM_BACKLOG_MAX_BYTES behind)."""

    def __init__(self, hub: ResultsHub, state: SkuState, interval_s: float, heartbeat_s: float) -> None:
        self.hub = hub
        self.sku = state.sku
        self.interval_s = interval_s
        self.heartbeat_s = heartbeat_s
        self.places = 0  # requests holding a place on this feed (joined or about to)
        self.listeners: set[Listener] = set()
        self.state = state
        self.event = Frames.of(sku_event(state))
        loop = asyncio.get_running_loop()
        self._quiet_until = loop.time() + heartbeat_s
        self._task = loop.create_task(self._run(), name=f"sku-feed-{self.sku}")

    def join(self, listener: Listener, sent: Frames) -> None:
        """`listener` gets every event after `sent` (the one its request wrote already)."""
        self.listeners.add(listener)
        if sent is not self.event:
            listener.write(self.event)

    def leave(self, listener: Listener) -> None:
        self.listeners.discard(listener)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval_s)
            self.tick(loop.time())

    def tick(self, now: float) -> None:
        frames: Frames | None = None
        state = self.hub.skus.get(self.sku)
        if state is not None and state is not self.state:
            self.state = state
            event = sku_event(state)
            if event != self.event.raw:
                frames = self.event = Frames.of(event)
        if frames is None and now >= self._quiet_until:
            frames = HEARTBEAT_FRAMES
        if frames is not None:
            self._quiet_until = now + self.heartbeat_s
        ended: list[Listener] = []
        for listener in self.listeners:
            transport = listener.transport
            if transport.is_closing():
                listener.end("gone")
                ended.append(listener)
            elif frames is None:
                continue
            elif transport.get_write_buffer_size() > SKU_STREAM_BACKLOG_MAX_BYTES:
                listener.end("slow")
                ended.append(listener)
            else:
                listener.write(frames)
        for listener in ended:
            self.listeners.discard(listener)

    def stop(self) -> None:
        self._task.cancel()


STREAMS = web.AppKey("event_streams", Streams)
