"""What `flashsale dev` checks before it starts: every port it will listen on, named, and the
Procfile's committers (one writer per shard, the others standbys with their own status port);
and before it says ready, each ingest process's own /readyz as well as the shared port's."""

from __future__ import annotations

from pathlib import Path

import msgspec

from config.settings import load
from flashsale.supervision import Program, app_programs
from launch.dev_checks import committer_warnings, ingest_readiness, ports_in_use, wanted_ports

SETTINGS = load(env={}, file=None, ingest_port=8080, ingest_metrics_port=9100, gateway_metrics_port=9200,
                committer_metrics_port=9110, shards=2, nats_port=14222, nats_monitor_port=18222,
                pg_port=15432)
NATS = Program("nats", "python -m launch embedded-nats", role="server")
PG = Program("postgres", "python -m launch embedded-postgres", role="server")
PROCFILE = Path("Procfile")


def test_every_port_of_the_run_is_wanted_with_what_names_it():
    app = [Program("fakepsp", "python -m gateway.fakepsp --port 8090")]
    assert wanted_ports(SETTINGS, [NATS, PG], app) == {
        8080: "ingest_port", 9100: "ingest_metrics_port", 9200: "gateway_metrics_port",
        9110: "committer_metrics_port + 0", 9111: "committer_metrics_port + 1",
        14222: "nats_port", 18222: "nats_monitor_port", 15432: "pg_port", 8090: "Procfile fakepsp",
    }


def test_servers_the_environment_replaces_are_not_ours_to_listen_for():
    assert not {14222, 18222, 15432} & set(wanted_ports(SETTINGS, [], []))


def test_a_local_cluster_wants_each_nodes_client_route_and_monitor_ports():
    nodes = [Program(f"nats-n{i}", "x", role="server") for i in (1, 2, 3)]
    wanted = wanted_ports(SETTINGS, nodes, [])
    assert wanted[14222] == "nats node 1 client" and wanted[14225] == "nats node 1 route"
    assert wanted[18224] == "nats node 3 monitor"


def test_ports_in_use_are_listed_in_order_with_their_names():
    taken = {15432, 8080}
    busy = ports_in_use(SETTINGS, [NATS, PG], [], in_use=lambda port: port in taken)
    assert busy == ["8080 (ingest_port)", "15432 (pg_port)"]
    assert ports_in_use(SETTINGS, [NATS, PG], [], in_use=lambda port: False) == []


def committers(*lines: str) -> list[Program]:
    return [Program(f"c{i}", line) for i, line in enumerate(lines)]


def test_one_committer_per_shard_says_nothing():
    app = committers("python -m committer --shard 0", "python -m committer --shard 1")
    assert committer_warnings(SETTINGS, PROCFILE, app) == []


def test_a_missing_or_extra_shard_is_a_warning():
    app = committers("python -m committer --shard 0", "python -m committer --shard 2")
    [said] = committer_warnings(SETTINGS, PROCFILE, app)
    assert said.startswith("warning: Procfile has no committer for shard(s) [1] and committers for "
                           "shard(s) [2] outside the 2 shards")


def test_standbys_are_named_and_must_have_their_own_status_port():
    app = committers("python -m committer --shard 0", "python -m committer --shard 0",
                     "python -m committer --shard 1")
    assert committer_warnings(SETTINGS, PROCFILE, app) == [
        "shard 0: c0, c1 (whichever holds the lease writes, the other stand by)",
        "warning: c0, c1 would share shard 0's status port: give standbys their own --status-port",
    ]
    app[1] = Program("c1", "python -m committer --shard 0 --status-port 9300")
    assert committer_warnings(SETTINGS, PROCFILE, app) == [
        "shard 0: c0, c1 (whichever holds the lease writes, the other stand by)"]


def test_each_ingest_process_is_asked_on_its_own_status_port(tmp_path):
    procfile = tmp_path / "Procfile"
    procfile.write_text("ingest: python -m ingest\ncommitter0: python -m committer --shard 0\n")
    settings = msgspec.structs.replace(SETTINGS, ingest_processes=3)
    assert ingest_readiness(settings, app_programs(procfile, settings)) == {
        "ingest_port": "http://127.0.0.1:8080/readyz",
        "ingest": "http://127.0.0.1:9100/readyz",
        "ingest-2": "http://127.0.0.1:9101/readyz",
        "ingest-3": "http://127.0.0.1:9102/readyz",
    }
    one = msgspec.structs.replace(SETTINGS, ingest_processes=1)
    assert list(ingest_readiness(one, app_programs(procfile, one)).values()) == [
        "http://127.0.0.1:8080/readyz", "http://127.0.0.1:9100/readyz"]


def test_ingest_processes_without_a_status_port_are_seen_through_the_shared_one(tmp_path):
    procfile = tmp_path / "Procfile"
    procfile.write_text("ingest: python -m ingest\n")
    settings = msgspec.structs.replace(SETTINGS, ingest_processes=2, ingest_metrics_port=0)
    assert ingest_readiness(settings, app_programs(procfile, settings)) == {
        "ingest_port": "http://127.0.0.1:8080/readyz"}
