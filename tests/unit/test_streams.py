"""The streams as data: one intents stream per shard that keeps one message per subject and
refuses new messages when full (nothing that got a 202 is dropped, a second copy of a purchase
is refused by the server), atomic batches on the intents streams only, the replicas asked for on
every stream, and the one JetStream error that means "this intent is already stored"."""

from __future__ import annotations

import time

import msgspec

from proto.clock import now_ms
from proto.streams import ERR_STORE_FAILED, StreamLimits, is_already_stored, stream_specs
from proto.subjects import Names

LIMITS = StreamLimits(intents_max_age_s=3600.0, intents_max_bytes=1 << 20, results_max_age_s=60.0,
                      duplicate_window_s=120.0, replicas=3)


def test_one_intents_stream_per_shard_one_message_per_subject():
    names = Names("t")
    specs = {s.name: s for s in stream_specs(names, LIMITS, shards=3)}
    intents = [specs[names.intents_stream(k)] for k in range(3)]
    assert [s.subjects for s in intents] == [[names.intents_of_shard(k)] for k in range(3)]
    for s in intents:
        assert (s.max_msgs_per_subject, s.discard, s.discard_new_per_subject) == (1, "new", True)
        assert s.allow_direct
        assert s.max_bytes == LIMITS.intents_max_bytes and s.max_age_s == LIMITS.intents_max_age_s
    assert specs[names.payments_stream].retention == "workqueue"
    assert {s.replicas for s in specs.values()} == {3}
    assert len(specs) == 3 + 3  # results, payments, dead letters


def test_only_the_results_stream_of_a_single_node_is_acknowledged_before_its_fsync():
    """Every 202 is an intent on stable storage; results are Postgres's decisions told again."""
    names = Names("t")
    for replicas, results_async in ((1, True), (3, False)):  # async persistence is R1 only
        limits = msgspec.structs.replace(LIMITS, replicas=replicas)
        specs = {s.name: s for s in stream_specs(names, limits, shards=2)}
        assert {n for n, s in specs.items() if s.persist_async} == (
            {names.results_stream} if results_async else set())


def test_only_a_per_subject_refusal_means_already_stored():
    assert is_already_stored(ERR_STORE_FAILED, "maximum messages per subject exceeded")
    assert not is_already_stored(ERR_STORE_FAILED, "maximum bytes exceeded")  # full: a 503
    assert not is_already_stored(10071, "per subject")


def test_now_ms_is_wall_clock_milliseconds():
    before = time.time()
    t = now_ms()
    assert isinstance(t, int) and before * 1000 - 1 <= t <= time.time() * 1000 + 1
