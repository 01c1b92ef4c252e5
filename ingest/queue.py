"""Which purchases are pending, where each stands in its shard's queue, and whether the shard has
a live writer.

Each shard's intents are one JetStream stream, decided in stream order by one writer, and every
ingest instance follows every intents stream (`ingest.follower`), so it knows each pending
purchase (stored by any instance) and counts the intents of its shard in stream order: a
purchase's ordinal is the number of intents stored up to and including it (packed messages
count every intent they hold). The writer announces the last stream sequence it has taken into
a batch (on core NATS before deciding the batch, and `decided_seq` with every result batch); a
purchase has exactly `ordinal - 1 - taken` intents ahead of it, `taken` being the ordinal that
ends the last message taken. The position never grows and reaches 0 while its batch is being
decided. The estimate divides it by the shard's recent rate of intents taken.

Pure: the follower and the listener feed stream contents and progress in, the clock is passed in.
"""

from __future__ import annotations

from collections import OrderedDict, deque

import msgspec

from ingest.errors import Overloaded
from proto.messages import Intent, Purchase

RATE_SMOOTHING = 0.3  # weight of the newest rate sample
RATE_SAMPLE_MIN_S = 0.05  # progress closer together than this is merged into one sample
# FollowedIds' size: 2**26 bits (8 MiB). With two bits per id it answers "maybe" for about 2 %
# of the ids it never held after 5 million purchases, 7 % after 10 million.
FOLLOWED_BITS_LOG2 = 26


class FollowedIds:
    """Every purchase id the follower has read since this instance started, in a fixed size (a
    Bloom filter: two bits per id, from the string's hash). `may_hold` is True for every id
    added, and for a few it never held: False means "never read here", exactly. That is "never
    stored since the follower started" as long as `whole`: no stream message was skipped unread
    (deleted before the follower reached it)."""

    def __init__(self, bits_log2: int = FOLLOWED_BITS_LOG2) -> None:
        self._mask = (1 << bits_log2) - 1
        self._bits = bytearray(1 << max(0, bits_log2 - 3))
        self.whole = True

    def add(self, pid: str) -> None:
        h = hash(pid)
        bits, mask = self._bits, self._mask
        low, high = h & mask, (h >> 32) & mask
        bits[low >> 3] |= 1 << (low & 7)
        bits[high >> 3] |= 1 << (high & 7)

    def may_hold(self, pid: str) -> bool:
        h = hash(pid)
        bits, mask = self._bits, self._mask
        low, high = h & mask, (h >> 32) & mask
        return bool(bits[low >> 3] & (1 << (low & 7)) and bits[high >> 3] & (1 << (high & 7)))


class QueueView(msgspec.Struct, frozen=True):
    position: int  # intents of its shard ahead of it, not yet taken by the writer
    eta_ms: int | None  # position / the shard's recent decision rate; None before any rate


class _Pending(msgspec.Struct):
    shard: int
    ordinal: int
    intent: Purchase  # the first copy read
    # Copies with other bodies (the key reused), the first of each: which one is the purchase is
    # up to the writers (the first committed), so none of them is answered as the purchase yet.
    others: list[Purchase] = []


class _Shard:
    __slots__ = ("accepted_since_results", "ends", "last_results_s", "ordinal", "rate_per_s",
                 "sample_ordinal", "sample_s", "taken_ordinal", "taken_seq")

    def __init__(self, now_s: float) -> None:
        self.taken_seq = 0  # the last stream sequence the writer took
        self.ordinal = 0  # intents followed so far
        # (stream sequence, ordinal of its last intent) of followed messages not taken yet.
        self.ends: deque[tuple[int, int]] = deque()
        self.taken_ordinal = 0  # the ordinal ending the last followed message taken
        self.rate_per_s: float | None = None
        self.sample_ordinal = -1  # -1: no sample yet
        self.sample_s = now_s
        self.last_results_s = now_s  # a shard counts as heard from when ingest starts
        self.accepted_since_results = 0

    def advance(self) -> None:
        ends = self.ends
        while ends and ends[0][0] <= self.taken_seq:
            self.taken_ordinal = ends.popleft()[1]


class ShardQueues:
    def __init__(self, shards: int, positions_max: int, silence_s: float, silent_accept_max: int,
                 now_s: float, followed_bits_log2: int = FOLLOWED_BITS_LOG2) -> None:
        self.positions_max = positions_max
        self.silence_s = silence_s
        self.silent_accept_max = silent_accept_max
        self._shards = [_Shard(now_s) for _ in range(shards)]
        # Purchases followed in the intents streams and not decided yet, by id; oldest first.
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        # Every purchase id followed, decided or not (the sold-out fast path's "never stored").
        self.followed = FollowedIds(followed_bits_log2)

    # -- purchases -----------------------------------------------------------------------------

    def stored(self, shard: int, seq: int, intents: list[Intent]) -> None:
        """The follower read the intents stream message at `seq` (in stream order)."""
        if not 0 <= shard < len(self._shards):
            return
        s = self._shards[shard]
        pending = self._pending
        followed = self.followed
        for intent in intents:
            s.ordinal += 1
            if not isinstance(intent, Purchase):
                continue
            followed.add(intent.id)
            entry = pending.get(intent.id)
            if entry is None:
                pending[intent.id] = _Pending(shard, s.ordinal, intent)
            elif intent.request_hash != entry.intent.request_hash and all(
                o.request_hash != intent.request_hash for o in entry.others
            ):
                entry.others = [*entry.others, intent]
            # A second copy with the same body (a retry another instance could not see) changes
            # nothing: its writer decides the id once.
        s.ends.append((seq, s.ordinal))
        if len(s.ends) > self.positions_max:
            # A writer gone for long: keep every other mark. A position may then count some
            # intents already taken (until the next kept mark is passed), never too few.
            s.ends = deque(list(s.ends)[1::2])
        s.advance()
        while len(pending) > self.positions_max:
            pending.popitem(last=False)

    def skipped(self) -> None:
        """The follower found a shard's stream messages deleted before it read them: the ids
        they held are unknown here, so `followed` no longer answers "never stored"."""
        self.followed.whole = False

    def decided(self, pid: str) -> None:
        self._pending.pop(pid, None)

    def pending(self, pid: str, request_hash: str | None = None) -> Purchase | None:
        """The stored intent of a purchase not decided yet, as followed in its shard's stream:
        the copy with `request_hash` (None if there is none), or without one the first read."""
        entry = self._pending.get(pid)
        if entry is None:
            return None
        if request_hash is None or entry.intent.request_hash == request_hash:
            return entry.intent
        return next((o for o in entry.others if o.request_hash == request_hash), None)

    def view(self, pid: str) -> QueueView | None:
        entry = self._pending.get(pid)
        if entry is None:
            return None
        s = self._shards[entry.shard]
        position = max(0, entry.ordinal - 1 - s.taken_ordinal)
        eta_ms = round(position / s.rate_per_s * 1000) if s.rate_per_s else None
        return QueueView(position=position, eta_ms=eta_ms)

    # -- the writers' progress -----------------------------------------------------------------

    def taken(self, shard: int, taken_seq: int, now_s: float) -> None:
        """The shard's writer took a batch: it is alive (heard on core NATS, so this holds even
        while the result stream is being failed over)."""
        if 0 <= shard < len(self._shards):
            s = self._shards[shard]
            s.taken_seq = max(s.taken_seq, taken_seq)
            s.advance()
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
        s.advance()
        if s.sample_ordinal < 0:  # the first progress seen: a starting point, not a rate
            s.sample_ordinal, s.sample_s = s.taken_ordinal, now_s
            return
        elapsed_s = now_s - s.sample_s
        if elapsed_s < RATE_SAMPLE_MIN_S:
            return
        rate = (s.taken_ordinal - s.sample_ordinal) / elapsed_s
        s.rate_per_s = rate if s.rate_per_s is None else (
            RATE_SMOOTHING * rate + (1 - RATE_SMOOTHING) * s.rate_per_s
        )
        s.sample_ordinal, s.sample_s = s.taken_ordinal, now_s

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
