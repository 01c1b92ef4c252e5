"""The purge of a shard's intents stream, against an in-memory stream: it removes only what
recovery no longer needs (below the committer's ack floor and below the oldest intent of a
purchase still reserved or in a draw: where Postgres says it is stored, or on its own subject),
purges nothing when nothing is below that, and a dry run removes nothing."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import nats.js.errors
import pytest

from config.settings import Settings
from flashsale.retention import _purge_shard

SETTINGS = Settings(namespace="unit")
SHARD = 1
STREAM = SETTINGS.names.intents_stream(SHARD)


class Stream:
    """Messages 1..n of one intents stream; purchase intents' subjects by sequence."""

    def __init__(self, n: int, purchases: dict[str, int]) -> None:
        self.first_seq, self.last_seq = 1, n
        self.seq_of_subject = {SETTINGS.names.intent(SHARD, "purchase", pid): seq
                               for pid, seq in purchases.items()}
        self.purged_below: list[int] = []

    async def get_last_msg(self, stream: str, subject: str, direct: bool) -> Any:
        assert stream == STREAM and direct
        seq = self.seq_of_subject.get(subject)
        if seq is None or seq < self.first_seq:
            raise nats.js.errors.NotFoundError
        return SimpleNamespace(seq=seq)

    async def stream_info(self, stream: str) -> Any:
        return SimpleNamespace(state=SimpleNamespace(
            first_seq=self.first_seq, messages=self.last_seq - self.first_seq + 1))

    async def purge_stream(self, stream: str, seq: int) -> None:
        assert stream == STREAM
        self.purged_below.append(seq)
        self.first_seq = seq


LIVE = ("p_live", None)  # stored alone, on its own subject (seq 40)
PACKED = ("p_packed", 35)  # in a packed message: purchases.intent_seq says where


@pytest.mark.parametrize(("floor", "live", "kept_from"), [
    (100, [], 101),  # everything decided, nothing live: all of it
    (100, [LIVE], 40),  # a live purchase's intent (seq 40) and all after it stay
    (100, [LIVE, PACKED], 35),  # the oldest live purchase's message decides
    (30, [LIVE, PACKED], 31),  # undecided intents stay, even below a live one
    (100, [("p_elsewhere", None)], 101),  # not found on this shard: holds nothing here
])
async def test_only_what_recovery_no_longer_needs_goes(floor, live, kept_from):
    js = Stream(120, {"p_live": 40})
    done = await _purge_shard(js, SETTINGS, SHARD, floor, live, dry_run=False)  # type: ignore[arg-type]
    assert done.kept_from_seq == kept_from and js.first_seq == kept_from
    assert (done.messages_before, done.messages_after) == (120, 120 - kept_from + 1)


async def test_nothing_below_the_floor_purges_nothing():
    js = Stream(120, {})
    js.first_seq = 101
    done = await _purge_shard(js, SETTINGS, SHARD, 100, [], dry_run=False)  # type: ignore[arg-type]
    assert js.purged_below == [] and done.messages_after == done.messages_before == 20


async def test_a_dry_run_removes_nothing():
    js = Stream(120, {"p_live": 40})
    done = await _purge_shard(js, SETTINGS, SHARD, 100, [LIVE], dry_run=True)  # type: ignore[arg-type]
    assert js.purged_below == [] and done.kept_from_seq == 40
    assert done.messages_after == done.messages_before == 120
