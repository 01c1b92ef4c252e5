"""The shard map check (flashsale/shardmap.py) and the scrubbed environment of the embedded
servers (launch/embedded.py): pure parts."""

from __future__ import annotations

from flashsale.shardmap import ShardMap, mismatch
from launch.embedded import server_env
from proto.sharding import SHARD_FUNCTION


def test_a_process_acts_only_under_the_map_it_is_configured_for():
    stored = ShardMap(shards=3, function=SHARD_FUNCTION, changed_at_ms=0)
    assert mismatch(stored, 3) is None
    assert "the system has 3 shards, this process is configured for 2" in (mismatch(stored, 2) or "")
    assert "run `flashsale schema`" in (mismatch(None, 3) or "")
    other = ShardMap(shards=3, function="md5-mod", changed_at_ms=0)
    assert "assigns SKUs with 'md5-mod'" in (mismatch(other, 3) or "")


def test_the_servers_environment_holds_nothing_of_flashsales(monkeypatch):
    monkeypatch.setenv("FLASHSALE_ID_SECRET", "s3cret")
    monkeypatch.setenv("DATABASE_URL", "postgresql://flashsale:pw@h/db")
    monkeypatch.setenv("NATS_URL", "nats://flashsale:pw@h:4222")
    monkeypatch.setenv("PATH", "/usr/bin")
    env = server_env()
    assert env["PATH"] == "/usr/bin"
    assert not any("FLASHSALE" in k or "URL" in k or "pw" in v or "s3cret" in v for k, v in env.items())
