"""The embedded servers' configuration, without starting them: nats-server's file (the template
filled in, the client user and password, 0600), postgres's client authentication and the stale
lock files a crashed postmaster leaves, and a local cluster's routes."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from flashsale.urls import NATS_USER, password
from launch.cluster import NodePorts, dev_node_ports, node_config, node_name
from launch.embedded import write_secret
from launch.nats_server import nats_server_binary, write_nats_conf
from launch.postgres_server import PG_HBA, clear_stale_postgres


def test_the_nats_configuration_is_the_template_with_our_user(tmp_path):
    conf = write_nats_conf(tmp_path, 14222, 18222)
    text = conf.read_text()
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert "14222" in text and "18222" in text and str(tmp_path / "jetstream") in text
    assert f'user: "{NATS_USER}"' in text and f'password: "{password(tmp_path)}"' in text
    assert "$" not in text.replace("$G", "")  # every placeholder filled in
    assert Path(nats_server_binary()).exists()


def test_a_secret_file_is_the_owners_only_even_if_it_was_not(tmp_path):
    path = tmp_path / "conf"
    path.write_text("old")
    os.chmod(path, 0o644)
    write_secret(path, "new")
    assert (path.read_text(), stat.S_IMODE(path.stat().st_mode)) == ("new", 0o600)


def test_postgres_asks_every_client_for_its_password():
    rules = [line.split() for line in PG_HBA.splitlines() if line and not line.startswith("#")]
    assert rules == [["local", "all", "all", "scram-sha-256"],
                     ["host", "all", "all", "127.0.0.1/32", "scram-sha-256"]]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_lock_files_of_a_dead_postmaster_are_cleared(tmp_path):
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "postmaster.pid").write_text(f"{dead_pid()}\n{pgdata}\n")
    (tmp_path / ".s.PGSQL.5432.lock").write_text(f"{dead_pid()}\n")
    (tmp_path / ".s.PGSQL.5432").write_text("")
    clear_stale_postgres(pgdata, socket_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pgdata"] and not any(pgdata.iterdir())


def test_a_socket_lock_held_by_a_pid_that_is_no_postgres_is_stale(tmp_path):
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    lock = tmp_path / ".s.PGSQL.5432.lock"
    lock.write_text(f"{os.getpid()}\n")  # alive, but not a postgres: the lock is stale
    clear_stale_postgres(pgdata, socket_dir=tmp_path)
    assert not lock.exists()


def test_a_dev_cluster_has_node_ones_ports_and_routes_after_the_clients():
    nodes = dev_node_ports(3, 14222, 18222)
    assert nodes[0] == NodePorts(14222, 14225, 18222) and nodes[2] == NodePorts(14224, 14227, 18224)
    assert [node_name(i) for i in range(3)] == ["flashsale-n1", "flashsale-n2", "flashsale-n3"]


def test_a_node_routes_to_every_other_node_and_not_to_itself(tmp_path):
    nodes = dev_node_ports(3, 14222, 18222)
    conf = node_config("flashsale-n2", nodes[1], nodes, tmp_path)
    assert "nats-route://127.0.0.1:14225" in conf and "nats-route://127.0.0.1:14227" in conf
    assert "nats-route://127.0.0.1:14226" not in conf
    assert conf.count("jetstream {") == 1 and 'listen: "127.0.0.1:14223"' in conf
