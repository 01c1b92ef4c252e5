"""What each client IP and buyer holds open waiting: the per-client and per-buyer caps on
long-polls and event streams (429)."""

from __future__ import annotations

from ingest.edge.counts import Counts
from ingest.edge.limits import EdgeLimits
from ingest.edge.refusals import refused


class WaitBudget:
    """What each client IP and buyer holds open waiting: long-polls and event streams of every
    kind (the process-wide caps are the hub's and the SKU feeds'). Over a cap the request is
    refused with a 429, so one client cannot take every slot. A SKU stream is public: counted
    against its client only."""

    def __init__(self, client_max: int, buyer_max: int, retry_after_s: int = 1) -> None:
        self.per_client = Counts(client_max)
        self.per_buyer = Counts(buyer_max)
        self.retry_after_s = retry_after_s

    @classmethod
    def for_limits(cls, limits: EdgeLimits, retry_after_s: int) -> WaitBudget:
        return cls(limits.client_waits_max, limits.buyer_waits_max, retry_after_s)

    def acquire(self, client: str | None, buyer: str | None) -> None:
        """Count one wait for `client` and `buyer` (None: not counted), or raise a 429."""
        if client is not None and not self.per_client.acquire(client):
            raise refused("waits_client", client, self.retry_after_s,
                          f"client {client} holds {self.per_client.per_key_max} long-polls and "
                          "streams already")
        if buyer is not None and not self.per_buyer.acquire(buyer):
            if client is not None:
                self.per_client.release(client)
            raise refused("waits_buyer", buyer, self.retry_after_s,
                          f"buyer {buyer!r} holds {self.per_buyer.per_key_max} long-polls already")

    def release(self, client: str | None, buyer: str | None) -> None:
        if client is not None:
            self.per_client.release(client)
        if buyer is not None:
            self.per_buyer.release(buyer)
