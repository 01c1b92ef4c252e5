"""Where a pending purchase stands in its shard's queue, and whether the shard has a live writer.

Each shard's intents are one JetStream stream, decided in stream order by one writer, so a
purchase stored at sequence `seq` has exactly `seq - 1 - taken` intents of its shard ahead of it,
where `taken` is the last sequence the writer has taken into a batch (it announces that on core
NATS before deciding the batch, and `decided_seq` with every result batch). The position never
grows (`taken` only grows) and reaches 0 while its batch is being decided. The estimate divides
it by the shard's recent decision rate.

Pure: the listener feeds progress in, the clock is passed in.
"""

from __future__ import annotations

from collections import OrderedDict

import msgspec

from ingest.publisher import Overloaded

RATE_SMOOTHING = 0.3  # weight of the newest rate sample
RATE_SAMPLE_MIN_S = 0.05  # progress closer together than this is merged into one sample


class QueueView(msgspec.Struct, frozen=True):
    position: int  # intents of its shard ahead of it, not yet taken by the writer
    eta_ms: int | None  # position / the shard's recent decision rate; None before any rate


class _Shard:
    __slots__ = ("accepted_since_results", "last_results_s", "rate_per_s", "sample_s", "sample_seq",
                 "taken_seq")

    def __init__(self, now_s: float) -> None:
        self.taken_seq = 0
        self.rate_per_s: float | None = None
        self.sample_seq = 0
        self.sample_s = now_s
        self.last_results_s = now_s  # a shard counts as heard from when ingest starts
        self.accepted_since_results = 0


class ShardQueues:
    def __init__(self, shards: int, positions_max: int, silence_s: float, silent_accept_max: int,
                 now_s: float) -> None:
        self.positions_max = positions_max
        self.silence_s = silence_s
        self.silent_accept_max = silent_accept_max
        self._shards = [_Shard(now_s) for _ in range(shards)]
        # pid -> (shard, stream sequence) of purchases stored and not decided yet; oldest first.
        self._queued: OrderedDict[str, tuple[int, int]] = OrderedDict()

    # -- purchases -----------------------------------------------------------------------------

    def queued(self, pid: str, shard: int, seq: int) -> None:
        if seq <= 0 or not 0 <= shard < len(self._shards):
            return
        self._queued[pid] = (shard, seq)
        self._queued.move_to_end(pid)
        if len(self._queued) > self.positions_max:
            self._queued.popitem(last=False)

    def decided(self, pid: str) -> None:
        self._queued.pop(pid, None)

    def view(self, pid: str) -> QueueView | None:
        entry = self._queued.get(pid)
        if entry is None:
            return None
        shard, seq = entry
        s = self._shards[shard]
        position = max(0, seq - 1 - s.taken_seq)
        eta_ms = round(position / s.rate_per_s * 1000) if s.rate_per_s else None
        return QueueView(position=position, eta_ms=eta_ms)

    # -- the writers' progress -----------------------------------------------------------------

    def taken(self, shard: int, taken_seq: int, now_s: float) -> None:
        """The shard's writer took a batch: it is alive (heard on core NATS, so this holds even
        while the result stream is being failed over)."""
        if 0 <= shard < len(self._shards):
            s = self._shards[shard]
            s.taken_seq = max(s.taken_seq, taken_seq)
            s.last_results_s = now_s
            s.accepted_since_results = 0

    def results(self, shard: int, decided_seq: int, now_s: float) -> None:
        """A result batch (or a heartbeat) from the shard's writer: it is alive and this far."""
        if not 0 <= shard < len(self._shards):
            return
        s = self._shards[shard]
        s.last_results_s = now_s
        s.accepted_since_results = 0
        if decided_seq <= 0:
            return
        s.taken_seq = max(s.taken_seq, decided_seq)
        if s.sample_seq == 0:  # the first progress seen: a starting point, not a rate
            s.sample_seq, s.sample_s = decided_seq, now_s
            return
        elapsed_s = now_s - s.sample_s
        if elapsed_s < RATE_SAMPLE_MIN_S or decided_seq < s.sample_seq:
            return
        rate = (decided_seq - s.sample_seq) / elapsed_s
        s.rate_per_s = rate if s.rate_per_s is None else (
            RATE_SMOOTHING * rate + (1 - RATE_SMOOTHING) * s.rate_per_s
        )
        s.sample_seq, s.sample_s = decided_seq, now_s

    # -- a shard without a live writer ---------------------------------------------------------

    def check_live(self, shard: int, now_s: float) -> None:
        """Raises Overloaded when the shard's writer has been silent for silence_s and this
        instance already accepted silent_accept_max intents for it since: a dead writer must not
        turn into a flood of purchases that are decided (mostly rejected) only much later."""
        s = self._shards[shard]
        if now_s - s.last_results_s > self.silence_s and s.accepted_since_results >= self.silent_accept_max:
            raise Overloaded("shard_unavailable")

    def accepted(self, shard: int) -> None:
        self._shards[shard].accepted_since_results += 1
