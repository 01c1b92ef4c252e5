"""The committer process around its writer (committer/__main__.py, links.py, schema.py): the
command line, the refusal of a shard outside the map, one log line per kind of failure, the
Postgres session a writer runs in, and the one conversion of a stored row. No servers."""

from __future__ import annotations

import logging

import pytest

from committer import __main__ as process
from committer.links import Health, Unreachable, postgres_session
from committer.schema import PURCHASE_COLUMNS, decision_of, schema_sql
from config.settings import Settings

SETTINGS = Settings(namespace="unit", shards=2, lease_ttl_s=3.0, committer_metrics_port=9300)


def test_the_status_port_defaults_to_one_per_shard_and_0_turns_it_off():
    assert process.parse(["--shard", "1"], SETTINGS) == (1, 9301)
    assert process.parse(["--shard", "1", "--status-port", "0"], SETTINGS) == (1, 0)
    no_metrics = Settings(namespace="unit", committer_metrics_port=0)
    assert process.parse(["--shard", "0"], no_metrics) == (0, 0)


def test_a_shard_outside_the_map_is_refused():
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        process.Shard(SETTINGS, 2)


def test_a_process_with_no_writer_is_not_ready():
    hold = process.Shard(SETTINGS, 0)
    assert not hold.ready() and hold.epoch is None
    assert hold.ttl_ms == 3_000


def test_failures_are_logged_once_per_kind_and_lost_dependencies_once(caplog: pytest.LogCaptureFixture):
    hold = process.Shard(SETTINGS, 0)
    with caplog.at_level(logging.INFO, logger="committer"):
        for _ in range(3):
            hold._failed(RuntimeError("a bug"))
            hold._failed(Unreachable("nats", OSError("refused")))
        hold.health.back("nats")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["rebuilding after error", "nats lost", "nats back"]


def test_health_says_each_change_once(caplog: pytest.LogCaptureFixture):
    health = Health(0)
    with caplog.at_level(logging.INFO, logger="committer"):
        health.back("postgres")  # never lost: nothing to say
        health.lost("postgres", OSError("gone"))
        health.lost("postgres", OSError("still gone"))
        health.back("postgres")
    assert [r.getMessage() for r in caplog.records] == ["postgres lost", "postgres back"]


def test_a_stalled_writer_cannot_hold_its_lease_row_past_the_ttl():
    session = postgres_session(SETTINGS, 1)
    assert session == {"application_name": "committer-1",
                       "idle_in_transaction_session_timeout": "3000", "lock_timeout": "3000"}


def test_a_purchase_row_reads_back_as_its_decision():
    row = dict.fromkeys(c.strip() for c in PURCHASE_COLUMNS.split(","))
    row.update(id="p1", sku="s", user_id="u", qty=1, status="confirmed", amount_cents=500,
               accepted_at_ms=1, decided_at_ms=2, updated_at_ms=2, request_hash="h")
    d = decision_of(row)
    assert (d.id, d.status, d.amount_cents, d.reason, d.draw_rank) == ("p1", "confirmed", 500, None, None)


def test_the_schema_keeps_the_money_invariants_in_postgres():
    sql = schema_sql()
    assert "never_oversell" in sql and "CREATE TABLE IF NOT EXISTS purchases" in sql
