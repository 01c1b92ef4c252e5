"""Stream configs from settings, and how an existing stream's config is merged with them: what
the code defines wins, what protects data (replicas, retention, dedupe window) never shrinks; a
subscription ends quietly."""

from __future__ import annotations

import dataclasses
import math

import nats.errors
import pytest
from nats.js.api import DiscardPolicy, PersistMode, StreamConfig

from config.settings import load
from flashsale.jetstream import merge_config, nats_servers, stream_configs, unsubscribe_quietly


def test_nats_url_is_one_server_or_a_comma_separated_list():
    assert nats_servers("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]
    assert nats_servers("nats://a:4222, nats://b:4222,nats://c:4222,") == [
        "nats://a:4222", "nats://b:4222", "nats://c:4222"]
    with pytest.raises(ValueError):
        nats_servers(" , ")


def test_stream_replicas_reach_every_stream():
    assert {c.num_replicas for c in stream_configs(load(env={}, file=None))} == {1}
    settings = load(env={"FLASHSALE_STREAM_REPLICAS": "3"}, file=None)
    configs = stream_configs(settings)
    assert len(configs) == settings.shards + 3  # intents per shard, results, payments, deadletter
    assert {c.num_replicas for c in configs} == {3}


def intents(replicas: int) -> StreamConfig:
    s = load(env={}, file=None, stream_replicas=replicas)
    return next(c for c in stream_configs(s) if c.name == s.names.intents_stream(0))


def as_server_reports(config: StreamConfig, **changes: object) -> StreamConfig:
    """What stream info returns for a stream created from `config`: server defaults filled in."""
    defaults: dict[str, object] = {
        "max_age": config.max_age or 0.0,
        "max_bytes": -1 if config.max_bytes is None else config.max_bytes,
        "allow_direct": bool(config.allow_direct),
        "duplicate_window": config.duplicate_window or 120.0,  # 0 asks for the server's default
    }
    return dataclasses.replace(config, **{**defaults, **changes})


def test_a_stream_created_from_the_settings_needs_no_update():
    for config in stream_configs(load(env={}, file=None)):
        merge = merge_config(as_server_reports(config), config)
        assert merge.changed == {} and merge.kept == {}, config.name


def test_an_r3_stream_stays_r3_when_a_process_wants_r1():
    merge = merge_config(as_server_reports(intents(3)), intents(1))
    assert merge.changed == {}
    assert merge.kept == {"num_replicas": 3}
    assert merge.config.num_replicas == 3


def test_an_r1_stream_is_raised_to_r3():
    merge = merge_config(as_server_reports(intents(1)), intents(3))
    assert merge.changed == {"num_replicas": [1, 3]}
    assert merge.config.num_replicas == 3


def results(replicas: int) -> StreamConfig:
    s = load(env={}, file=None, stream_replicas=replicas)
    return next(c for c in stream_configs(s) if c.name == s.names.results_stream)


def test_a_stream_persisted_asynchronously_keeps_its_single_copy():
    assert results(1).persist_mode == PersistMode.ASYNC and results(3).persist_mode is None
    kept_async = merge_config(as_server_reports(results(1)), results(3))
    assert kept_async.changed == {} and kept_async.kept == {"persist_mode": PersistMode.ASYNC}
    kept = merge_config(as_server_reports(results(3)), results(1))
    assert kept.changed == {} and kept.config.persist_mode is None


def test_limits_an_operator_raised_are_kept_and_lower_ones_raised():
    wanted = intents(1)
    assert wanted.max_bytes is not None and wanted.max_age is not None
    raised = as_server_reports(wanted, max_bytes=wanted.max_bytes * 4, max_age=0.0,
                               duplicate_window=wanted.duplicate_window * 2)
    merge = merge_config(raised, wanted)
    assert merge.changed == {}
    assert merge.kept == {"max_bytes": wanted.max_bytes * 4, "max_age": 0.0,
                          "duplicate_window": wanted.duplicate_window * 2}
    lowered = as_server_reports(wanted, max_bytes=1024, max_age=60.0)
    merge = merge_config(lowered, wanted)
    assert merge.changed == {"max_bytes": [1024, wanted.max_bytes], "max_age": [60.0, wanted.max_age]}
    assert math.isclose(merge.config.max_age or 0, wanted.max_age)


def test_what_the_code_defines_wins_and_the_rest_of_the_server_config_is_kept():
    wanted = intents(1)
    drifted = as_server_reports(wanted, max_msgs_per_subject=5, discard=DiscardPolicy.OLD,
                                description="set by an operator", metadata={"team": "sales"})
    merge = merge_config(drifted, wanted)
    assert merge.changed == {"max_msgs_per_subject": [5, 1],
                             "discard": [DiscardPolicy.OLD, DiscardPolicy.NEW]}
    assert merge.config.description == "set by an operator"
    assert merge.config.metadata == {"team": "sales"}


class Subscription:
    def __init__(self, fails: bool) -> None:
        self.fails = fails
        self.unsubscribed = 0

    async def unsubscribe(self) -> None:
        self.unsubscribed += 1
        if self.fails:
            raise nats.errors.ConnectionClosedError


async def test_a_subscription_ends_quietly_whatever_the_server_says():
    for fails in (False, True):
        sub = Subscription(fails)
        await unsubscribe_quietly(sub)  # type: ignore[arg-type]
        assert sub.unsubscribed == 1
    await unsubscribe_quietly(None)

