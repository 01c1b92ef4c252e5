"""What the harness reads of flashsale's processes and where systems run, against small fakes:
/metrics text as written by prometheus_client, NATS servers as pids and URLs."""

from __future__ import annotations

import msgspec

from bench.baseline_systems import redis_conf
from bench.flashsale_system import batch_counters
from bench.genspec import GenSpec
from bench.systems import BatchCounters, NatsServers

INGEST_METRICS = """\
# HELP flashsale_ingest_intent_batches Intent batches stored
# TYPE flashsale_ingest_intent_batches gauge
flashsale_ingest_intent_batches 12.0
flashsale_ingest_batched_intents 600.0
flashsale_ingest_intent_batch_store_seconds 0.024
flashsale_ingest_requests_total{route="/v1/purchases",status="202"} 600.0
"""
COMMITTER_METRICS = """\
flashsale_batch_size_bucket{le="50.0",shard="1"} 3.0
flashsale_batch_size_count{shard="1"} 10.0
flashsale_batch_size_sum{shard="1"} 480.0
flashsale_batch_size_created{shard="1"} 1.7e+09
"""


def test_batch_counters_sum_every_ingest_and_every_committer():
    ingests = INGEST_METRICS.splitlines() * 2  # two ingest processes, the same counts each
    committers = COMMITTER_METRICS.splitlines() + COMMITTER_METRICS.replace('"1"', '"0"').splitlines()
    assert batch_counters(ingests, committers) == BatchCounters(
        batches=24, intents=1200, store_s=0.048, commits=20, committed_intents=960)
    assert batch_counters([], []) == BatchCounters(0, 0, 0, 0, 0)


def test_a_cluster_is_every_node_with_r3_streams():
    single = NatsServers("nats://127.0.0.1:1", [10], 1)
    cluster = NatsServers("nats://127.0.0.1:1,nats://127.0.0.1:2,nats://127.0.0.1:3", [10, 11, 12], 3)
    assert (single.servers, single.replicas) == (["nats://127.0.0.1:1"], 1)
    assert (len(cluster.servers), cluster.replicas) == (3, 3)
    assert NatsServers("a,b,c,d,e", [1, 2, 3, 4, 5], 5).replicas == 3  # JetStream's most


def test_a_generator_spec_survives_its_trip_through_the_command_line():
    spec = GenSpec(port=1, mode="open", duration_s=2, start_at=0.0, tag="t", skus=["a"], rate=50)
    assert msgspec.json.decode(msgspec.json.encode(spec), type=GenSpec) == spec


def test_redis_keeps_an_append_only_file_only_with_the_asked_fsync(tmp_path):
    conf = redis_conf(6399, tmp_path, "always").splitlines()
    assert {"port 6399", "bind 127.0.0.1", 'save ""', "appendonly yes", "appendfsync always"} <= set(conf)
    assert "appendfsync everysec" in redis_conf(6399, tmp_path, "everysec")
