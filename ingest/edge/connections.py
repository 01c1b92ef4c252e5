"""Open connections of the process and per peer address, and which idle one gives way at the
process's cap."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Protocol

from ingest.edge.clients import Trusted
from ingest.edge.counts import Counts
from ingest.edge.limits import EdgeLimits
from ingest.edge.refusals import Reason, note_refusal

# Idle connections looked at to choose the one closed for a new connection at the process's cap.
EVICT_SCAN_MAX = 32


class Evictable(Protocol):
    """A connection the guard may close to make room: its peer, and how to close it."""

    peer: str

    def evict(self) -> None: ...


class ConnectionGuard:
    """Open connections of the process and per peer address. A trusted proxy carries many
    clients on its connections, so only the process cap applies to it.

    At the process's cap a new connection is not refused while another is idle (no request in
    flight: between two requests of a kept-alive connection, or before its first head is
    complete): the idle connection goes instead, so idle connections held from many addresses
    cannot lock new clients out. Which one: among the EVICT_SCAN_MAX idle the longest, the one
    whose address holds the most connections (the furthest over a fair share), the longest
    idle of those first. A request in flight is never cut to make room."""

    def __init__(self, limits: EdgeLimits, trusted: Trusted) -> None:
        self.connections_max = limits.connections_max
        self.per_client = Counts(limits.client_connections_max)
        self.trusted = trusted
        self.open = 0
        self.closing = 0  # evicted, not yet gone: their fds are still open
        self._idle: OrderedDict[Evictable, None] = OrderedDict()  # longest idle first

    def admit(self, peer: str) -> Reason | None:
        """Count a new connection from `peer`, or the reason to close it at once."""
        trusted = self.trusted.has(peer)
        if not trusted and self.per_client.held(peer) >= self.per_client.per_key_max:
            return "connections_client"
        if self.open - self.closing >= self.connections_max and not self._make_room():
            return "connections_total"
        if not trusted:
            self.per_client.acquire(peer)
        self.open += 1
        return None

    def release(self, peer: str, evicted: bool) -> None:
        self.open -= 1
        if evicted:
            self.closing -= 1
        if not self.trusted.has(peer):
            self.per_client.release(peer)

    def idle(self, conn: Evictable) -> None:
        self._idle.pop(conn, None)
        self._idle[conn] = None

    def busy(self, conn: Evictable) -> None:
        self._idle.pop(conn, None)

    def _make_room(self) -> bool:
        victim: Evictable | None = None
        for conn in itertools.islice(self._idle, EVICT_SCAN_MAX):
            if victim is None or self.per_client.held(conn.peer) > self.per_client.held(victim.peer):
                victim = conn
        if victim is None:
            return False
        del self._idle[victim]
        self.closing += 1
        note_refusal("connection_evicted", victim.peer)
        victim.evict()
        return True
