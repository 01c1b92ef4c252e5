"""Server-Sent Events: a purchase's state and a SKU's availability, pushed as they change.

`GET /v1/purchases/{id}/events` (the buyer's, like GET) sends the current state at once, then
every change: a decision as soon as the hub's watch wakes, a change of the pending view (its
queue position) when the view is re-read every `sse_queue_poll_ms`; a `: hb` comment after
`sse_heartbeat_s` of silence; and it ends after a final state, or after `sse_max_s` (the client
reconnects with `Last-Event-ID`).

Event ids name the state the client then holds, so a resume sends exactly what is newer:
`pending`, `pending.<position>` or `pending.<position>.<eta_ms>` while pending, and
`<status>.<updated_at_ms>` once decided. They are ordered per purchase: pending before decided,
a smaller position after a larger one (a position never increases), a later `updated_at_ms`
after an earlier one. A state is sent when its id differs from the last one the client has and
is not older than it; a client that holds the final state already gets `204 No Content`, which
also tells `EventSource` to stop reconnecting.

`GET /v1/skus/{sku}/events` (public) sends the SKU view at once and then at most one update per
`sku_events_interval_ms`, only when it changed: one feed per SKU reads the hub on that interval,
encodes the event once and writes the same bytes to every listener's transport itself (see
SkuFeed); a listener that falls SKU_STREAM_BACKLOG_MAX_BYTES behind is dropped. A SKU stream
holds a wait of its client (edge.waits.WaitBudget) like a long-poll.
"""

from __future__ import annotations

import asyncio
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Literal

import msgspec
from aiohttp import HttpVersion11, web

from config.settings import Settings
from ingest import metrics, problems
from ingest.edge.clients import client_of
from ingest.edge.process import EDGE
from ingest.edge.refusals import note_refusal
from ingest.edge.waits import WaitBudget
from ingest.purchases import owned_purchase, purchase_id_in_path, purchase_view, reader_of
from ingest.queue import QueueView
from ingest.results import PurchaseState, ResultsHub, Watch, is_final, newer, status_of
from ingest.schemas import PurchaseView, encode_json, sku_view_of
from ingest.skus import known_sku
from ingest.state import STATE, Services
from proto.messages import STATUSES, Decision, SkuState

EVENT_STREAM = "text/event-stream"
HEARTBEAT = b": hb\n\n"
# Last-Event-ID is the client's echo of an id this server made: anything longer is not one.
EVENT_ID_LEN_MAX = 64
_PENDING_UNPLACED = -(2**63)
GONE_CHECK_S = 1.0  # `pending` without a position: before any placed pending state


class Frames(msgspec.Struct, frozen=True):
    """One SSE message as written to a stream: as is (HTTP/1.0, the connection ends the body) and
    as one chunk of a chunked body (HTTP/1.1). Built once per message, written to every stream."""

    raw: bytes
    chunked: bytes

    @classmethod
    def of(cls, raw: bytes) -> Frames:
        return cls(raw, b"%x\r\n%b\r\n" % (len(raw), raw))


HEARTBEAT_FRAMES = Frames.of(HEARTBEAT)
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


def setup(app: web.Application, settings: Settings) -> None:
    async def streams(app: web.Application) -> AsyncIterator[None]:
        front = app[EDGE]
        app[STREAMS] = Streams(
            front.limits.sku_streams_max, front.waits, settings.sku_events_interval_ms / 1000,
            settings.sse_heartbeat_s, settings.retry_after_s,
        )
        yield
        app[STREAMS].close()

    async def end_streams(app: web.Application) -> None:
        # Before aiohttp waits for the open handlers: streams end now, cleanly, not at the cut-off.
        app[STREAMS].close()

    app.cleanup_ctx.append(streams)
    app.on_shutdown.append(end_streams)
    # No HEAD: it would hold the connection for a stream whose body it never sends.
    app.router.add_get("/v1/purchases/{id}/events", purchase_events, allow_head=False)
    app.router.add_get("/v1/skus/{sku}/events", sku_events, allow_head=False)


# -- the wire format -----------------------------------------------------------------------


def event(name: str, data: bytes, event_id: str | None = None) -> bytes:
    # JSON from msgspec has no raw newlines, so every event is one `data:` line.
    head = f"id: {event_id}\nevent: {name}\n" if event_id is not None else f"event: {name}\n"
    return head.encode() + b"data: " + data + b"\n\n"


def sku_event(state: SkuState) -> bytes:
    return event("sku", encode_json(sku_view_of(state)))


def _queue(view: PurchaseView) -> tuple[int | None, int | None]:
    """(position, eta_ms) of a pending view's `queue`, (None, None) without one."""
    if not isinstance(view.queue, QueueView):  # none, or waiting for a draw
        return None, None
    return view.queue.position, view.queue.eta_ms


def event_id(state: PurchaseState, view: PurchaseView) -> str:
    if isinstance(state, Decision):
        return f"{state.status}.{state.updated_at_ms}"
    position, eta_ms = _queue(view)
    if position is None:
        return "pending"
    return f"pending.{position}" if eta_ms is None else f"pending.{position}.{eta_ms}"


def event_order(eid: str) -> tuple[int, int] | None:
    """Where an id stands in its purchase's history; None for a string that is not our id."""
    if len(eid) > EVENT_ID_LEN_MAX:
        return None
    status, _, rest = eid.partition(".")
    if status == "pending":
        if not rest:
            return (0, _PENDING_UNPLACED)
        position = rest.partition(".")[0]
        return (0, -int(position)) if _is_number(position) else None
    if status in STATUSES and _is_number(rest):  # a decided status (pending is above)
        return (1, int(rest))
    return None


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()  # str.isdigit alone takes "²", which int() refuses


def is_news(eid: str, held: str | None) -> bool:
    """Whether a client holding the state `held` (None: nothing) should get the state `eid`."""
    if held is None:
        return True
    if eid == held:
        return False
    mine, theirs = event_order(eid), event_order(held)
    return theirs is None or mine is None or mine >= theirs


# -- the routes ----------------------------------------------------------------------------


def _view(svc: Services, state: PurchaseState) -> PurchaseView:
    # The one place the stream builds a view: the view GET /v1/purchases/{id} answers.
    return purchase_view(svc, state)


async def _open(request: web.Request, settings: Settings) -> web.StreamResponse:
    resp = web.StreamResponse(headers={
        "Content-Type": EVENT_STREAM,
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",  # a proxy in front (nginx) must not hold events back
    })
    if request.version >= HttpVersion11:
        # Said here rather than left to aiohttp: a SKU feed frames its chunks itself (`Frames`).
        resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(f"retry: {settings.sse_retry_ms}\n\n".encode())
    return resp


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def held_event_id(request: web.Request) -> str | None:
    """The id of the state the client holds, from `Last-Event-ID` (None: it holds nothing)."""
    held = request.headers.get("Last-Event-ID") or None
    if held is not None and len(held) > EVENT_ID_LEN_MAX:
        raise problems.Rejection(
            400, "bad_last_event_id", "Invalid Last-Event-ID",
            f"Last-Event-ID is at most {EVENT_ID_LEN_MAX} characters: send back an id this stream sent",
        )
    return held


async def purchase_events(request: web.Request) -> web.StreamResponse:
    svc = request.app[STATE]
    reader = reader_of(svc, request)
    pid = purchase_id_in_path(svc, request)
    held = held_event_id(request)
    with svc.hub.watching(pid, True, client=client_of(request), buyer=reader.buyer) as watch:
        current = await owned_purchase(svc, pid, reader, client_of(request))
        if watch is None:
            raise problems.Rejection(
                503, "too_many_streams", "Too many event streams",
                "this instance holds waiters_max long-polls and streams already",
                retry_after_s=svc.settings.retry_after_s,
            )
        current = newer(current, watch.decision)
        if is_final(current) and held == event_id(current, _view(svc, current)):
            return web.Response(status=204)  # the client has the last word already
        resp = await _open(request, svc.settings)
        metrics.EVENT_STREAMS.labels("purchase").inc()
        try:
            await _stream_purchase(request, resp, svc, watch, current, held)
        except ConnectionResetError:
            pass  # the client went away
        finally:
            metrics.EVENT_STREAMS.labels("purchase").dec()
    return resp


async def _stream_purchase(
    request: web.Request, resp: web.StreamResponse, svc: Services, watch: Watch,
    current: PurchaseState, held: str | None,
) -> None:
    settings = svc.settings
    closed = request.app[STREAMS].closed
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.sse_max_s
    quiet_until = loop.time() + settings.sse_heartbeat_s
    while True:
        # Re-arm before reading: a decision landing while this loop writes is in watch.decision.
        watch.rearm()
        current = newer(current, watch.decision)
        view = _view(svc, current)
        eid = event_id(current, view)
        if is_news(eid, held):
            await resp.write(event("purchase", encode_json(view), eid))
            held = eid
            quiet_until = loop.time() + settings.sse_heartbeat_s
        if is_final(current):
            break
        now = loop.time()
        if now >= deadline or closed.done() or _gone(request):
            break
        if now >= quiet_until:
            await resp.write(HEARTBEAT)
            quiet_until = now + settings.sse_heartbeat_s
        # Pending: the queue position moves without a decision. Otherwise still look for a
        # client that left now and then (nothing tells the handler), to free its place.
        tick_s = settings.sse_queue_poll_ms / 1000 if status_of(current) == "pending" else GONE_CHECK_S
        timeout = min(min(deadline, quiet_until) - now, tick_s)
        await asyncio.wait((watch.fut, closed), timeout=max(timeout, 0.0), return_when=FIRST_COMPLETED)
    await resp.write_eof()


async def sku_events(request: web.Request) -> web.StreamResponse:
    svc = request.app[STATE]
    streams = request.app[STREAMS]
    state = await known_sku(svc, request)
    with streams.place(svc.hub, state, client_of(request)) as feed:
        resp = await _open(request, svc.settings)
        sent = feed.event
        try:
            await resp.write(sent.raw)  # through aiohttp, which sends the head with it
        except ConnectionResetError:
            return resp
        transport = request.transport
        if transport is None or transport.is_closing():
            return resp
        listener = Listener(transport, resp.chunked)
        feed.join(listener, sent)
        try:
            ending = await _sku_stream_ends(listener, streams.closed, svc.settings.sse_max_s)
        finally:
            feed.leave(listener)
        if ending == "slow":
            note_refusal("sku_stream_slow", client_of(request))
            transport.abort()
        elif ending != "gone":
            try:
                await resp.write_eof()
            except ConnectionResetError:
                pass
    return resp


async def _sku_stream_ends(
    listener: Listener, closed: asyncio.Future[None], max_s: float
) -> Ending | Literal["closed", "done"]:
    """Why the stream ends: its feed ended it, the server closes, or it lived `max_s`."""
    done, _ = await asyncio.wait((listener.ended, closed), timeout=max_s, return_when=FIRST_COMPLETED)
    if listener.ended.done():
        return listener.ended.result()
    return "closed" if done else "done"
