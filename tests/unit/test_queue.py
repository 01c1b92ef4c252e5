"""Queue positions and writer liveness per shard (pure: the clock is passed in)."""

from __future__ import annotations

import pytest

from ingest.publisher import Overloaded
from ingest.queue import ShardQueues


def queues(**over: float) -> ShardQueues:
    args = {"shards": 2, "positions_max": 100, "silence_s": 3.0, "silent_accept_max": 2, "now_s": 0.0}
    args.update(over)
    return ShardQueues(**args)  # type: ignore[arg-type]


def test_position_counts_the_intents_ahead_and_never_grows():
    q = queues()
    q.queued("p", shard=0, seq=11)
    assert q.view("p").position == 10  # type: ignore[union-attr]
    q.results(0, decided_seq=4, now_s=1.0)
    assert q.view("p").position == 6  # type: ignore[union-attr]
    q.taken(0, taken_seq=3, now_s=1.5)  # an older announcement arriving late changes nothing
    assert q.view("p").position == 6  # type: ignore[union-attr]
    q.taken(0, taken_seq=11, now_s=1.6)  # its batch is being decided: nobody ahead any more
    assert q.view("p").position == 0  # type: ignore[union-attr]
    q.results(0, decided_seq=20, now_s=2.0)
    assert q.view("p").position == 0  # type: ignore[union-attr]
    q.decided("p")
    assert q.view("p") is None


def test_other_shards_do_not_move_a_position():
    q = queues()
    q.queued("p", shard=1, seq=5)
    q.results(0, decided_seq=100, now_s=1.0)
    q.taken(0, taken_seq=200, now_s=1.0)
    assert q.view("p").position == 4  # type: ignore[union-attr]


def test_the_estimate_follows_the_recent_decision_rate():
    q = queues()
    q.queued("p", shard=0, seq=1001)
    assert q.view("p").eta_ms is None  # type: ignore[union-attr]  # no rate yet
    q.results(0, decided_seq=100, now_s=1.0)
    q.results(0, decided_seq=600, now_s=2.0)  # 500 intents/s
    view = q.view("p")
    assert view is not None and view.position == 400 and view.eta_ms == 800


def test_a_silent_shard_takes_only_so_many_more_intents():
    q = queues()
    q.check_live(0, now_s=10.0)  # silent, but nothing accepted yet
    q.accepted(0)
    q.accepted(0)
    with pytest.raises(Overloaded) as exc:
        q.check_live(0, now_s=10.0)
    assert exc.value.cause == "shard_unavailable"
    q.check_live(1, now_s=10.0)  # another shard is not held back
    q.results(0, decided_seq=0, now_s=10.5)  # a heartbeat: the writer is back
    q.check_live(0, now_s=11.0)
    q.accepted(0)
    q.accepted(0)
    q.taken(0, taken_seq=1, now_s=20.0)  # a batch taken, heard on core NATS: alive too
    q.check_live(0, now_s=21.0)


def test_a_busy_shard_is_never_refused():
    q = queues()
    for i in range(10):
        q.accepted(0)
        q.results(0, decided_seq=i + 1, now_s=float(i))
        q.check_live(0, now_s=float(i) + 0.5)


def test_positions_are_bounded():
    q = queues(positions_max=2)
    for i in range(3):
        q.queued(f"p{i}", shard=0, seq=i + 1)
    assert q.view("p0") is None and q.view("p2") is not None
