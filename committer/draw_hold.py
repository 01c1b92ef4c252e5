"""When a due draw may be decided: once its writer has taken every intent stored before it.

A due draw waits until this writer has taken every intent stored before it was first looked at
when due (the cut): all delivered, none out with an earlier holder of the shard (a crashed
writer's batch comes back after ack_wait) nor unacked beyond the batch in hand. So a writer that
lags, restarts or takes over decides the same entries, and intents that keep arriving after the
cut do not delay it. Bounded: DRAW_HOLD_MAX_MS after it was due, the draw is decided all the
same (later arrivals go first come first served).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import nats.errors

from flashsale.logs import kv
from proto.subjects import Names

log = logging.getLogger("committer")

# How long past its time a draw waits for the writer to catch up with its intents stream.
DRAW_HOLD_MAX_MS = 30_000


class ConsumerInfoSource(Protocol):
    """The one JetStream call the hold makes (JetStreamContext has it)."""

    async def consumer_info(self, stream: str, consumer: str) -> Any: ...


class DrawHold:
    """The hold on one shard's due draws, as its writer's consumer sees the intents stream."""

    def __init__(self, js: ConsumerInfoSource, names: Names, shard: int) -> None:
        self.js = js
        self.stream = names.intents_stream(shard)
        self.durable = names.committer_durable(shard)
        self.shard = shard
        self._cut: tuple[int, int] | None = None  # (due draw's time, stream seq it waits for)

    async def held(self, due_ms: int | None, now_ms: int, taken: int) -> bool:
        """Whether the draw due at `due_ms` (None: no draw) must wait, with `taken` messages
        in hand."""
        if due_ms is None or now_ms < due_ms:
            return False
        if now_ms - due_ms > DRAW_HOLD_MAX_MS:
            log.warning("draw decided without a full catch-up", extra=kv(shard=self.shard))
            return False
        try:
            info = await self.js.consumer_info(self.stream, self.durable)
        except (TimeoutError, nats.errors.Error):
            return True
        delivered: int = info.delivered.stream_seq or 0 if info.delivered else 0
        if self._cut is None or self._cut[0] != due_ms:
            # Every message of the stream matches this consumer: the last stored sequence.
            self._cut = (due_ms, delivered + (info.num_pending or 0))
        return delivered < self._cut[1] or (info.num_ack_pending or 0) > taken
