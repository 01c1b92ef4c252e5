"""Server-Sent Events on the wire: frames, event ids and their order, and opening a stream.

Event ids name the state the client then holds, so a resume sends exactly what is newer:
`pending`, `pending.<position>` or `pending.<position>.<eta_ms>` while pending, and
`<status>.<updated_at_ms>` once decided. They are ordered per purchase: pending before decided,
a smaller position after a larger one (a position never increases), a later `updated_at_ms`
after an earlier one. A state is sent when its id differs from the last one the client has and
is not older than it.
"""

from __future__ import annotations

import msgspec
from aiohttp import HttpVersion11, web

from config.settings import Settings
from ingest import problems
from ingest.queue import QueueView
from ingest.results import PurchaseState
from ingest.schemas import PurchaseView, encode_json, sku_view_of
from proto.messages import STATUSES, Decision, SkuState

EVENT_STREAM = "text/event-stream"
HEARTBEAT = b": hb\n\n"
# Last-Event-ID is the client's echo of an id this server made: anything longer is not one.
EVENT_ID_LEN_MAX = 64
_PENDING_UNPLACED = -(2**63)


class Frames(msgspec.Struct, frozen=True):
    """One SSE message as written to a stream: as is (HTTP/1.0, the connection ends the body) and
    as one chunk of a chunked body (HTTP/1.1). Built once per message, written to every stream."""

    raw: bytes
    chunked: bytes

    @classmethod
    def of(cls, raw: bytes) -> Frames:
        return cls(raw, b"%x\r\n%b\r\n" % (len(raw), raw))


HEARTBEAT_FRAMES = Frames.of(HEARTBEAT)


HEARTBEAT_FRAMES = Frames.of(HEARTBEAT)


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


async def open_stream(request: web.Request, settings: Settings) -> web.StreamResponse:
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


def held_event_id(request: web.Request) -> str | None:
    """The id of the state the client holds, from `Last-Event-ID` (None: it holds nothing)."""
    held = request.headers.get("Last-Event-ID") or None
    if held is not None and len(held) > EVENT_ID_LEN_MAX:
        raise problems.Rejection(
            400, "bad_last_event_id", "Invalid Last-Event-ID",
            f"Last-Event-ID is at most {EVENT_ID_LEN_MAX} characters: send back an id this stream sent",
        )
    return held
