"""The connection guard in front of aiohttp: each accepted connection is counted (or reset)
before aiohttp sees it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from flashsale.head_guard import HeadGuard, Refusal, reset
from flashsale.problem_json import ProblemRequestHandler
from ingest.edge.process import Edge
from ingest.edge.refusals import note_refusal


class GuardedProtocol(HeadGuard):
    """One accepted connection: closed at once (an RST: nothing parsed, nothing answered) when
    its peer already holds its cap of connections, or the process does and none is idle (see
    ConnectionGuard); else served behind the head guard every port has (flashsale.head_guard),
    its refusals counted here, and offered to the ConnectionGuard whenever it is idle."""

    def __init__(self, make_handler: Callable[[], ProblemRequestHandler], edge: Edge) -> None:
        super().__init__(make_handler, edge.head_max_bytes, edge.guard_answers)
        self._edge = edge
        self.peer = ""
        self._evicted = False

    def admit(self, transport: asyncio.Transport) -> bool:
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else ""
        if not self._edge.admit_connection(self.peer):
            reset(transport)
            return False
        self._edge.connections.idle(self)  # nothing asked yet
        return True

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
