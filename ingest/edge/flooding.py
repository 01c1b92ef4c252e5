"""Clients that keep asking while told to wait: their connections reset at accept for a while."""

from __future__ import annotations

from collections import OrderedDict

from ingest.edge.limits import CLIENTS_TRACKED_MAX

# Rate refusals within a second after which a client's connections are closed and refused for
# its Retry-After (at least this many, and at least its burst).
FLOOD_REFUSALS_MIN = 20


class Flooding:
    """Clients that keep asking while told to wait. A client refused for its rate
    `refusals_max` times within a second gets its 429 with its connection closed, and its new
    connections are reset at accept until that 429's Retry-After has passed: refusing a
    connection costs the process a fraction of parsing a request to refuse it, so a flood of
    requests through 429s cannot take the CPU that other clients need. (An honest client a
    little over its rate sees a few refusals a second, not that many.) Only for a client that
    is its connection's peer: one behind a trusted proxy shares the proxy's connections, and
    its 429s stay 429s."""

    WINDOW_S = 1.0

    def __init__(self, refusals_max: int, keys_max: int = CLIENTS_TRACKED_MAX) -> None:
        self.refusals_max = refusals_max
        self.keys_max = keys_max
        # client -> (start of its window, refusals in it); least recently refused first
        self._refusals: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._benched: OrderedDict[str, float] = OrderedDict()  # client -> until (monotonic s)

    def refused(self, client: str, now_s: float, until_s: float) -> bool:
        """Count a refusal; True when the client is benched (its connection is to close)."""
        start_s, count = self._refusals.pop(client, (now_s, 0))
        if now_s - start_s >= self.WINDOW_S:
            start_s, count = now_s, 0
        self._refusals[client] = (start_s, count + 1)
        if len(self._refusals) > self.keys_max:
            self._refusals.popitem(last=False)
        if count + 1 < self.refusals_max:
            return False
        self._benched.pop(client, None)
        self._benched[client] = until_s
        if len(self._benched) > self.keys_max:
            self._benched.popitem(last=False)
        return True

    def holds(self, peer: str, now_s: float) -> bool:
        """Whether a new connection from `peer` is refused now."""
        if not self._benched:
            return False
        until_s = self._benched.get(peer)
        if until_s is None:
            return False
        if now_s < until_s:
            return True
        del self._benched[peer]
        self._refusals.pop(peer, None)
        return False
