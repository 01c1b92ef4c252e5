"""The system-wide commands, with the work itself replaced by small fakes (the real one runs
against NATS and Postgres in tests/integration/test_cli.py): what each says and its exit status,
and that each reaches the servers `flashsale dev` runs."""

from __future__ import annotations

import argparse
import json

import pytest

from flashsale import shardmap
from flashsale.retention import ShardPurge
from launch import operations
from proto.sharding import SHARD_FUNCTION


@pytest.fixture(autouse=True)
def next_to_dev(monkeypatch, tmp_path):
    monkeypatch.setenv("FLASHSALE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)


def shard_map(shards: int) -> shardmap.ShardMap:
    return shardmap.ShardMap(shards, SHARD_FUNCTION, 0)


@pytest.mark.parametrize("before, after, said", [
    (2, 3, "shard map: 2 -> 3 shards. Start committers 0..2 and every process with FLASHSALE_SHARDS=3"),
    (3, 3, "the system already has 3 shards"),
])
def test_reshard_says_what_to_start(before, after, said, monkeypatch, capsys):
    async def reshard(settings, shards):
        assert shards == after and settings.database_url.startswith("postgresql://flashsale:")
        return shard_map(before), shard_map(after)

    monkeypatch.setattr(shardmap, "reshard", reshard)
    assert operations.cmd_reshard(argparse.Namespace(shards=after)) == 0
    assert capsys.readouterr().out == said + "\n"


def test_purge_intents_prints_one_json_line_per_shard(monkeypatch, capsys):
    async def purge(settings, dry_run):
        assert dry_run
        return [ShardPurge(s, f"intents-{s}", 10, 7, 1, 5, 6) for s in range(2)]

    monkeypatch.setattr(operations, "purge_intents", purge)
    assert operations.cmd_purge_intents(argparse.Namespace(dry_run=True, every=None)) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["shard"], x["kept_from_seq"]) for x in lines] == [(0, 5), (1, 5)]
