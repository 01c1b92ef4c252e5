"""flashsale on a 3-node NATS cluster with R3 streams: a process never scales a stream down, a
NATS_URL listing the nodes works, DATABASE_URL may name several hosts, and kill -9 of the intents
stream's leader mid-flood costs an election, not a purchase."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
import pytest

from config.settings import Settings
from flashsale.db import ensure_database
from flashsale.jetstream import connect_nats, ensure_streams
from flashsale.ports import free_port
from launch.cluster import Cluster, start_cluster
from proto.sharding import shard_of
from tests.auth import bearer
from tests.chaos import scaled
from tests.conftest import Servers, System, running
from tests.flood import Attempt, FloodResult, check_invariants, plan, post_all
from tests.hostile import Hostile
from tests.integration.test_flood import create_sku
from tests.util import eventually

pytestmark = pytest.mark.chaos

STOCK = 400
PROBE_STOCK = 1_000_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = start_cluster(tmp_path_factory.mktemp("nats-cluster"), size=3)
    yield c
    c.stop()


@pytest.fixture
def healed_cluster(cluster: Cluster):
    """The module's cluster, whole again after the test (lost nodes restarted, caught up)."""
    yield cluster
    for node in cluster.nodes:
        if not node.alive:
            node.restart()
    cluster.wait_ready()


@pytest.fixture
def cluster_settings(settings: Settings, cluster: Cluster) -> Settings:
    """The test's own database and namespace (see `settings`), on the cluster, with R3 streams."""
    return msgspec.structs.replace(settings, nats_url=cluster.url, stream_replicas=3)


@pytest.fixture
def cluster_system(cluster_settings: Settings, tmp_path: Path) -> Iterator[System]:
    yield from running(cluster_settings, tmp_path / "logs")


async def replicas(js, settings: Settings) -> dict[str, int]:
    names = settings.names
    streams = [*(names.intents_stream(shard) for shard in range(settings.shards)),
               names.results_stream, names.payments_stream, names.deadletter_stream]
    return {s: (await js.stream_info(s)).config.num_replicas for s in streams}


async def test_a_list_of_nodes_connects_even_with_one_of_them_down(cluster, cluster_settings):
    dead = f"nats://127.0.0.1:{free_port()}"
    s = msgspec.structs.replace(cluster_settings, nats_url=f"{dead}, {cluster.url}")
    nc = await connect_nats(s, "test-list")
    try:
        assert nc.connected_url is not None and nc.connected_url.port != int(dead.rsplit(":", 1)[1])
        js = nc.jetstream()
        await ensure_streams(js, s)
        info = await js.stream_info(s.names.intents_stream(0))
        assert info.cluster is not None and info.cluster.leader is not None
        assert len(info.cluster.replicas or []) == 2
    finally:
        await nc.close()


async def test_a_starting_process_never_scales_a_stream_down(cluster_settings, caplog):
    r1 = msgspec.structs.replace(cluster_settings, stream_replicas=1)
    nc = await connect_nats(cluster_settings, "test-replicas")
    try:
        js = nc.jetstream()
        await ensure_streams(js, r1)
        assert set((await replicas(js, r1)).values()) == {1}
        with caplog.at_level(logging.INFO, logger="flashsale.jetstream"):
            await ensure_streams(js, cluster_settings)  # an operator moves to R3
        results = r1.names.results_stream
        # The results stream was created asynchronous: it keeps one copy and says how to fix it.
        assert {s: n for s, n in (await replicas(js, r1)).items() if n != 3} == {results: 1}
        [warning] = [r for r in caplog.records if r.getMessage() == "stream keeps one copy"]
        assert warning.__dict__["stream"] == results
        await js.delete_stream(results)
        await ensure_streams(js, cluster_settings)
        assert set((await replicas(js, r1)).values()) == {3}
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="flashsale.jetstream"):
            await ensure_streams(js, r1)  # a process started with the single-node default
        assert set((await replicas(js, r1)).values()) == {3}
        [line] = [r for r in caplog.records if r.getMessage() == "streams ensured"]
        done = line.__dict__["streams"]
        assert {e["action"] for e in done.values()} == {"unchanged"}
        assert all(e["kept_above_settings"] == {"num_replicas": 3} for e in done.values()), done
    finally:
        await nc.close()


async def test_database_url_with_several_hosts(servers: Servers, settings: Settings):
    """asyncpg tries the hosts in order: a dead first host does not stop a process, and the
    query parameters reach the maintenance connection too."""
    dead, live = free_port(), servers.postgres.port
    user = servers.postgres.url.split("//", 1)[1].split("@", 1)[0]  # postgres:<password>
    url = (f"postgresql://{user}@127.0.0.1:{dead},127.0.0.1:{live}/{settings.namespace}_multi"
           "?target_session_attrs=read-write")
    await ensure_database(url)
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT current_database()") == f"{settings.namespace}_multi"
    finally:
        await conn.close()


# The probe buys on the hot SKU's shard, so it measures the stream whose leader is lost.
PROBE_SKU = next(f"probe-{i}" for i in range(100) if shard_of(f"probe-{i}", 2) == shard_of("hot", 2))


@dataclass
class Probe:
    """One buyer after another on a SKU of its own, each retrying until accepted: when each
    request was sent and what came back, to see when purchases resume."""

    base_url: str
    attempts: list[Attempt] = field(default_factory=list)
    answers: list[tuple[float, float, int]] = field(default_factory=list)  # sent, received, status
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, worker: int) -> None:
        async with aiohttp.ClientSession() as http:
            i = 0
            while not self.stop.is_set():
                user = f"probe-{worker}-{i}"
                a = Attempt(user, f"probe-key-{worker}-{i}", {"sku": PROBE_SKU, "qty": 1, "user_id": user})
                i += 1
                self.attempts.append(a)
                while a.status not in (200, 202):
                    sent = time.monotonic()
                    try:
                        async with http.post(f"{self.base_url}/v1/purchases", json=a.body,
                                             headers={"Idempotency-Key": a.key, **bearer(user)},
                                             timeout=aiohttp.ClientTimeout(total=10)) as r:
                            a.status = r.status
                            body = await r.json(content_type=None)
                    except (TimeoutError, aiohttp.ClientError):
                        a.status = -1
                    self.answers.append((sent, time.monotonic(), a.status))
                    if a.status in (200, 202):
                        a.id, a.state = body["id"], body["status"]
                    else:
                        await asyncio.sleep(0.05)
                await asyncio.sleep(0.05)

    def first_accept_sent_after(self, t: float) -> float | None:
        return min((got for sent, got, status in self.answers if sent >= t and status == 202),
                   default=None)


def node_of_client(cluster: Cluster, client_name: str) -> str | None:
    """The node a named client is connected to (monitoring endpoint /connz)."""
    for node in cluster.nodes:
        if not node.alive:
            continue
        with urllib.request.urlopen(f"http://127.0.0.1:{node.ports.monitor}/connz", timeout=2) as r:
            if any(c.get("name") == client_name for c in json.load(r)["connections"] or []):
                return node.name
    return None


async def intents_leader(js, settings: Settings) -> str:
    """The node leading the intents stream of the hot SKU's shard."""
    info = await js.stream_info(settings.names.intents_stream(shard_of("hot", settings.shards)))
    assert info.cluster is not None and info.cluster.leader is not None
    return info.cluster.leader


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
async def test_losing_the_intents_leader_mid_flood(how, healed_cluster, cluster_system,
                                                   cluster_settings, db):
    """kill -9 costs an election; SIGTERM (a planned restart) lets the node hand its leaderships
    over before it exits."""
    s = cluster_settings
    cluster_system.start()
    await create_sku(cluster_system.base_url, s.admin_token, "hot", stock=STOCK, price_cents=999,
                     max_per_user=1)
    await create_sku(cluster_system.base_url, s.admin_token, PROBE_SKU, stock=PROBE_STOCK)
    nc = await connect_nats(s, "test-chaos")
    js = nc.jetstream()
    assert set((await replicas(js, s)).values()) == {3}
    leader = await intents_leader(js, s)

    probe = Probe(cluster_system.base_url)
    probes = [asyncio.create_task(probe.run(w)) for w in range(4)]
    attempts = plan("hot", requests=scaled(3000), users=scaled(2000), seed=13)
    started = time.monotonic()
    flood = asyncio.create_task(post_all(cluster_system.base_url, attempts, concurrency=100,
                                         hostile=Hostile(cluster_system.settings)))
    lost = healed_cluster.node(leader)
    try:
        await eventually(lambda: _decided_at_least(db, "hot", STOCK // 3, flood), timeout_s=60,
                         interval_s=0.02)
        assert not flood.done(), "the flood ended before the kill; make it longer"
        decided_at_kill = await db.fetchval("SELECT count(*) FROM purchases WHERE sku = 'hot'")
        ingest_on = node_of_client(healed_cluster, "flashsale-ingest")
        t_lost = time.monotonic()
        if how == "kill -9":
            lost.kill9()
        else:
            lost.server.proc.terminate()  # not waiting for the exit: buyers keep clicking
        result = await flood
        flood_s = time.monotonic() - started
        await eventually(lambda: _accepted_since(probe, t_lost), timeout_s=30)
        new_leader = await eventually(lambda: _leader_other_than(js, s, leader), timeout_s=30)
    finally:
        probe.stop.set()
        # A buyer still being refused 30 s on is left unaccepted: check_invariants reports it.
        await asyncio.wait(probes, timeout=30)
        for task in probes:
            task.cancel()
        await nc.close()
        await asyncio.to_thread(lost.server.stop)  # SIGTERM'd: exited by now, or made to
    resumed = probe.first_accept_sent_after(t_lost)
    assert resumed is not None
    during = Counter(status for sent, got, status in probe.answers if sent >= t_lost and got < resumed)
    print(f"\nintents leader {leader} lost ({how}) at {decided_at_kill} decisions; new leader {new_leader};"
          f" ingest was connected to {ingest_on}")
    print(f"unavailability ({how} -> first 202 for a request sent after it): {resumed - t_lost:.2f} s;"
          f" probe answers meanwhile: {dict(during)}")
    print(f"flood of {len(attempts)} POSTs in {flood_s:.1f} s: {dict(result.by_status())}")
    summary = await check_invariants(db, result, "hot", STOCK, max_per_user=1)
    print("hot:", summary)
    assert summary["confirmed"] == STOCK
    probe_summary = await check_invariants(db, FloodResult(probe.attempts), PROBE_SKU, PROBE_STOCK,
                                           max_per_user=None)
    print("probe:", probe_summary)


async def _decided_at_least(db: asyncpg.Connection, sku: str, n: int, flood: asyncio.Task) -> bool:
    return flood.done() or await db.fetchval("SELECT count(*) FROM purchases WHERE sku = $1", sku) >= n


async def _accepted_since(probe: Probe, t: float) -> bool:
    return probe.first_accept_sent_after(t) is not None


async def _leader_other_than(js, settings: Settings, old: str) -> str | None:
    try:
        leader = await intents_leader(js, settings)
    except Exception:
        return None  # no leader yet, or our connection is moving to another node
    return leader if leader != old else None
