"""Pending purchases, queue positions and writer liveness per shard (pure: the clock is passed
in, the stream's messages are fed in as the follower reads them)."""

from __future__ import annotations

import pytest

from ingest.errors import Overloaded
from ingest.queue import FollowedIds, ShardQueues
from proto.messages import Cancel, Intent, Purchase


def purchase(pid: str, body: str = "h") -> Purchase:
    return Purchase(id=pid, sku="s", qty=1, user_id="u", request_hash=body, accepted_at_ms=0)


def fill(q: ShardQueues, shard: int, messages: int, first_seq: int = 1) -> None:
    """Messages of one intent each (not purchases): they count in the queue, nothing pends."""
    for seq in range(first_seq, first_seq + messages):
        q.stored(shard, seq, [Cancel(id=f"c{seq}")])


def queues(**over: float) -> ShardQueues:
    args = {"shards": 2, "positions_max": 100, "silence_s": 3.0, "silent_accept_max": 2, "now_s": 0.0}
    args.update(over)
    return ShardQueues(**args)  # type: ignore[arg-type]


def test_position_counts_the_intents_ahead_and_never_grows():
    q = queues()
    fill(q, 0, 10)
    q.stored(0, 11, [purchase("p")])
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
    fill(q, 1, 4)
    q.stored(1, 5, [purchase("p")])
    q.results(0, decided_seq=100, now_s=1.0)
    q.taken(0, taken_seq=200, now_s=1.0)
    assert q.view("p").position == 4  # type: ignore[union-attr]


def test_the_estimate_follows_the_recent_decision_rate():
    q = queues(positions_max=10_000)
    fill(q, 0, 1000)
    q.stored(0, 1001, [purchase("p")])
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
        q.stored(0, i + 1, [purchase(f"p{i}")])
    assert q.view("p0") is None and q.view("p2") is not None


def test_marks_of_messages_not_taken_are_bounded_and_positions_never_too_low():
    q = queues(positions_max=10)
    fill(q, 0, 100)
    q.stored(0, 101, [purchase("p")])
    q.taken(0, taken_seq=50, now_s=1.0)
    position = q.view("p").position  # type: ignore[union-attr]
    assert 50 <= position <= 100  # 50 ahead in truth: coarser, never fewer
    q.taken(0, taken_seq=101, now_s=1.1)
    assert q.view("p").position == 0  # type: ignore[union-attr]


def test_a_packed_message_counts_every_intent_it_holds():
    q = queues()
    fill(q, 0, 2)  # ordinals 1, 2
    packed: list[Intent] = [purchase("a"), Cancel(id="x"), purchase("b"), purchase("c")]
    q.stored(0, 3, packed)  # ordinals 3..6
    q.stored(0, 4, [purchase("d")])  # ordinal 7
    assert [q.view(p).position for p in "abcd"] == [2, 4, 5, 6]  # type: ignore[union-attr]
    q.taken(0, taken_seq=2, now_s=1.0)
    assert [q.view(p).position for p in "abcd"] == [0, 2, 3, 4]  # type: ignore[union-attr]
    q.taken(0, taken_seq=3, now_s=1.1)  # the packed message is taken whole
    assert [q.view(p).position for p in "abcd"] == [0, 0, 0, 0]  # type: ignore[union-attr]


def test_progress_heard_before_the_message_is_read_applies_once_it_is():
    q = queues()
    q.taken(0, taken_seq=2, now_s=1.0)  # core NATS can overtake the follower's consumer
    fill(q, 0, 2)
    q.stored(0, 3, [purchase("p")])
    assert q.view("p").position == 0  # type: ignore[union-attr]


def test_every_body_stored_for_a_pending_purchase_is_found():
    q = queues()
    q.stored(0, 1, [purchase("p", body="first")])
    q.stored(0, 2, [purchase("p", body="second")])  # the same key, another body, elsewhere
    pending = q.pending("p")
    assert pending is not None and pending.request_hash == "first"
    # Which body is the purchase is the writers' call (the first committed): each copy is found.
    assert [q.pending("p", body).request_hash for body in ("first", "second")] == ["first", "second"]  # type: ignore[union-attr]
    assert q.pending("p", "third") is None
    assert q.view("p").position == 0  # type: ignore[union-attr]
    q.decided("p")
    assert q.pending("p") is None and q.view("p") is None


def test_followed_ids_hold_every_purchase_read_decided_or_not():
    q = queues()
    q.stored(0, 1, [purchase("p"), Cancel(id="c")])
    q.stored(1, 1, [purchase("r", body="h2")])
    q.decided("p")
    assert q.followed.may_hold("p") and q.followed.may_hold("r")  # decided: still followed
    assert not q.followed.may_hold("c")  # a cancel is no purchase
    assert q.followed.whole
    q.skipped()
    assert not q.followed.whole


def test_followed_ids_never_miss_one_and_rarely_hold_another():
    followed = FollowedIds(bits_log2=16)  # 64 Ki bits
    ids = [f"id-{i}" for i in range(1000)]
    for pid in ids:
        followed.add(pid)
    assert all(followed.may_hold(pid) for pid in ids)
    # About 0.1 % expected (two bits per id, 2,000 of 65,536 set); a "maybe" only costs a query.
    assert sum(followed.may_hold(f"other-{i}") for i in range(10_000)) < 100
