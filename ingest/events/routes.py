"""Server-Sent Events: a purchase's state and a SKU's availability, pushed as they change.

`GET /v1/purchases/{id}/events` (the buyer's, like GET) sends the current state at once, then
every change: a decision as soon as the hub's watch wakes, a change of the pending view (its
queue position) when the view is re-read every `sse_queue_poll_ms`; a `: hb` comment after
`sse_heartbeat_s` of silence; and it ends after a final state, or after `sse_max_s` (the client
reconnects with `Last-Event-ID`).

Event ids name the state the client then holds, so a resume sends exactly what is newer (see
`sse`); a client that holds the final state already gets `204 No Content`, which also tells
`EventSource` to stop reconnecting.

`GET /v1/skus/{sku}/events` (public) sends the SKU view at once and then at most one update per
`sku_events_interval_ms`, only when it changed, from one feed per SKU (`sku_feeds`).
"""

from __future__ import annotations

import asyncio
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator
from typing import Literal

from aiohttp import web

from config.settings import Settings
from ingest import metrics, problems
from ingest.edge.clients import client_of
from ingest.edge.process import EDGE
from ingest.edge.refusals import note_refusal
from ingest.events.sku_feeds import STREAMS, Ending, Listener, Streams
from ingest.events.sse import HEARTBEAT, event, event_id, held_event_id, is_news, open_stream
from ingest.purchases import owned_purchase, purchase_id_in_path, purchase_view, reader_of
from ingest.results import PurchaseState, Watch, is_final, newer, status_of
from ingest.schemas import PurchaseView, encode_json
from ingest.skus import known_sku
from ingest.state import STATE, Services

GONE_CHECK_S = 1.0  # `pending` without a position: before any placed pending state


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


def _view(svc: Services, state: PurchaseState) -> PurchaseView:
    # The one place the stream builds a view: the view GET /v1/purchases/{id} answers.
    return purchase_view(svc, state)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


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
        resp = await open_stream(request, svc.settings)
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
        resp = await open_stream(request, svc.settings)
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
