"""The connection guard in front of aiohttp: each accepted connection is counted (or reset)
before aiohttp sees it, and a lone plain request may be answered beside aiohttp (`Take`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from flashsale.head_guard import HeadGuard, Refusal, reset
from flashsale.problem_json import ProblemRequestHandler
from ingest.edge.process import Edge
from ingest.edge.refusals import note_refusal

# What a request answered beside aiohttp is answered with: the answer's bytes, and whether the
# connection closes after them.
Answered = Callable[[bytes, bool], None]
# Answers a lone request itself (ingest.lean): its bytes, the peer, and where its answer goes;
# None when it does not take it.
Take = Callable[[bytes, str, Answered], "asyncio.Task[None] | None"]
# Answers written but not yet sent beyond which nothing more is taken beside aiohttp: a client
# that pipelines requests without reading the answers meets aiohttp's back-pressure instead.
UNREAD_ANSWERS_MAX_BYTES = 65_536


class GuardedProtocol(HeadGuard):
    """One accepted connection: closed at once (an RST: nothing parsed, nothing answered) when
    its peer already holds its cap of connections, or the process does and none is idle (see
    ConnectionGuard); else served behind the head guard every port has (flashsale.head_guard),
    its refusals counted here, and offered to the ConnectionGuard whenever it is idle. A lone
    request that `take` answers is answered before anything the client sends after it is looked
    at: that is read and held (reading pauses beyond a head and a body) until the answer is
    written, then served in turn."""

    def __init__(self, make_handler: Callable[[], ProblemRequestHandler], edge: Edge,
                 take: Take | None = None) -> None:
        super().__init__(make_handler, edge.head_max_bytes, edge.guard_answers)
        self._edge = edge
        self._take = take
        self.peer = ""
        self._evicted = False
        self._taken: asyncio.Task[None] | None = None  # answering a request `take` took
        self._held = bytearray()  # what arrived meanwhile
        self._held_max_bytes = edge.head_max_bytes + edge.body_max_bytes
        self._reading_paused = False

    def admit(self, transport: asyncio.Transport) -> bool:
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else ""
        if not self._edge.admit_connection(self.peer):
            reset(transport)
            return False
        self._edge.connections.idle(self)  # nothing asked yet
        return True

    def data_received(self, data: bytes) -> None:
        if self._taken is None:
            super().data_received(data)
            return
        self._held += data
        if len(self._held) > self._held_max_bytes and not self._reading_paused and self._transport:
            self._transport.pause_reading()
            self._reading_paused = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._taken is not None:  # the client is gone: so is its request's wait
            self._taken.cancel()
            self._taken = None
        super().connection_lost(exc)

    def lone_request(self, data: bytes) -> bool:
        handler, transport = self._handler, self._transport
        if self._take is None or handler is None or transport is None:
            return False
        if transport.get_write_buffer_size() > UNREAD_ANSWERS_MAX_BYTES:
            return False  # a client that does not read: aiohttp waits for it to drain
        self._taken = self._take(data, self.peer, self._answered_taken)
        if self._taken is None:
            return False
        handler.answering_elsewhere()
        return True

    def _answered_taken(self, answer: bytes, close: bool) -> None:
        self._taken = None
        transport, handler = self._transport, self._handler
        if transport is None or handler is None or transport.is_closing():
            return
        transport.write(answer)
        self.response_done()
        if close:
            transport.close()
            return
        handler.answered_elsewhere()
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if self._held:
            held = bytes(self._held)
            self._held.clear()
            self.data_received(held)

    def released(self) -> None:
        self._edge.connections.busy(self)
        self._edge.connections.release(self.peer, self._evicted)

    def requests_changed(self, in_flight: int) -> None:
        if in_flight:
            self._edge.connections.busy(self)
        else:
            self._edge.connections.idle(self)

    def evict(self) -> None:
        """Close this idle connection (a FIN: the client's next request opens a new one)."""
        self._evicted = True
        if self._transport is not None:
            if self._transport.get_write_buffer_size():
                self._transport.abort()  # a client that does not read would keep it open
            else:
                self._transport.close()

    def refused(self, reason: Refusal) -> None:
        detail = f"more than {self._edge.head_max_bytes} bytes before the blank line" \
            if reason == "head_too_large" else ""
        note_refusal(reason, self.peer, detail=detail)
