"""kill -9 of a committer and of nats-server while a flood is stored many intents to a message:
every purchase answered 202 is decided exactly once, nothing is oversold, and the decisions
announced are the ones Postgres holds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from config.settings import Settings
from launch.embedded import Embedded
from launch.nats_server import start_nats
from proto.sharding import shard_of
from tests.chaos import scaled
from tests.chaos.test_committer_kill import wait_rows
from tests.conftest import System, running
from tests.flood import check_invariants, plan, post_all
from tests.history import check_history
from tests.integration.test_flood import create_sku

pytestmark = pytest.mark.chaos

STOCK = 400


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[list[Embedded]]:
    """A nats-server of this test's own (the session's is shared: it must not be killed). A
    list, so the test can put the restarted server in its place."""
    servers = [start_nats(tmp_path / "nats")]
    yield servers
    servers[-1].stop()


@pytest.fixture
def own_settings(settings: Settings, own_nats: list[Embedded]) -> Settings:
    return msgspec.structs.replace(settings, nats_url=own_nats[0].url)


@pytest.fixture
def own_system(own_settings: Settings, tmp_path: Path) -> Iterator[System]:
    yield from running(own_settings, tmp_path / "logs")


async def test_kill_9_committer_and_nats_server_with_packed_intents(own_system, own_settings, own_nats,
                                                                    db, tmp_path):
    s = own_settings
    own_system.start()
    await create_sku(own_system.base_url, s.admin_token, "hot", stock=STOCK, price_cents=999,
                     max_per_user=1)
    shard = shard_of("hot", s.shards)
    name = f"committer-{shard}"
    attempts = plan("hot", requests=scaled(4000), users=scaled(3000), seed=17)
    flood = asyncio.create_task(post_all(own_system.base_url, attempts, concurrency=200))

    # The writer dies in the middle of whatever batch it holds: fetched, deciding or committing.
    await wait_rows(db, STOCK // 4, flood)
    own_system.processes[name].kill9()
    await asyncio.sleep(0.3)  # buyers keep clicking into JetStream meanwhile
    own_system.start_committer(shard, name=name)

    # Then the server that stored every acknowledged intent dies: a packed message is on disk
    # whole (acknowledged after its fsync) or was never acknowledged to anyone.
    await wait_rows(db, STOCK // 2, flood)
    assert not flood.done(), "the flood ended before the kills; make it longer"
    server = own_nats[0]
    server.proc.kill()
    server.proc.wait()
    await asyncio.sleep(0.5)  # refused meanwhile: 503, and the buyers retry with the same key
    own_nats.append(start_nats(tmp_path / "nats", port=server.port))

    result = await flood
    accepted = set(result.accepted())
    summary = await check_invariants(db, result, "hot", STOCK, max_per_user=1)
    history = await check_history(db, s, accepted)
    print(f"\n{summary}\n{history}")
    assert summary["confirmed"] == STOCK
    # Every committer survived the server's restart (or was restarted above), none stopped on
    # a second decision of an id.
    assert all(p.alive for n, p in own_system.processes.items() if n.startswith("committer"))
