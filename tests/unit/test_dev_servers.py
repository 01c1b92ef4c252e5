"""The embedded servers under `flashsale dev`: which programs run them, and the settings (with
generated credentials) that point every process at them, unless the environment names others;
and `flashsale env`, which points a process started by hand at the same servers."""

from __future__ import annotations

import shlex
import sys

from config.settings import load
from flashsale.supervision import write_conf
from flashsale.urls import PG_SERVICE_ROLE, SERVICE_PASSWORD_FILE, password
from launch.cli import main
from launch.dev_servers import embedded_programs, embedded_urls, settings_next_to_dev

SETTINGS = load(env={}, file=None, nats_port=14222, nats_monitor_port=18222, pg_port=15432)


def test_the_embedded_urls_carry_the_generated_passwords(tmp_path):
    urls = embedded_urls(SETTINGS, tmp_path, environ={})
    nats_secret = password(tmp_path / "nats")
    service_secret = password(tmp_path / "postgres", SERVICE_PASSWORD_FILE)
    superuser_secret = password(tmp_path / "postgres")
    assert urls == {
        "nats_url": f"nats://flashsale:{nats_secret}@127.0.0.1:14222",
        "nats_monitor_url": "http://127.0.0.1:18222",
        "database_url": f"postgresql://{PG_SERVICE_ROLE}:{service_secret}@127.0.0.1:15432/flashsale",
        "database_admin_url": f"postgresql://postgres:{superuser_secret}@127.0.0.1:15432/flashsale",
    }


def test_servers_the_environment_names_are_left_alone(tmp_path):
    assert embedded_urls(SETTINGS, tmp_path, environ={"NATS_URL": "x", "DATABASE_URL": "y"}) == {}
    assert not (tmp_path / "nats").exists()  # no password made for a server we do not run


def test_one_nats_node_and_postgres_are_programs_of_this_command(tmp_path):
    servers, overrides = embedded_programs(SETTINGS, tmp_path)
    me = f"{shlex.quote(sys.executable)} -m launch"
    assert [(p.name, p.runs_as, p.stop_signal) for p in servers] == [
        ("nats", "server", "TERM"), ("postgres", "server", "INT")]
    assert servers[0].command.startswith(f"{me} embedded-nats --data-dir ")
    assert servers[0].ports == [14222, 18222] and servers[1].ports == [15432]
    assert set(overrides) == {"nats_url", "nats_monitor_url", "database_url", "database_admin_url"}


def test_a_local_cluster_is_one_program_per_node_and_clients_know_every_node(tmp_path):
    servers, overrides = embedded_programs(SETTINGS, tmp_path, nats_nodes=3)
    assert [p.name for p in servers] == ["nats-n1", "nats-n2", "nats-n3", "postgres"]
    assert "embedded-nats-node --node 2 --size 3" in servers[2].command
    secret = password(tmp_path / "nats")
    assert overrides["nats_url"] == ",".join(
        f"nats://flashsale:{secret}@127.0.0.1:{port}" for port in (14222, 14223, 14224))


def test_a_command_next_to_dev_reaches_its_servers(monkeypatch, tmp_path):
    monkeypatch.setenv("FLASHSALE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")
    monkeypatch.delenv("NATS_URL", raising=False)
    settings = settings_next_to_dev()
    assert settings.database_url == "postgresql://elsewhere/db"
    assert password(tmp_path / "nats") in settings.nats_url


def test_env_names_every_node_of_devs_nats_cluster(monkeypatch, tmp_path, capsys):
    """`flashsale env` points a process started by hand where dev's own processes point: under
    `dev --nats-cluster 3`, at every node (with one down, it still reaches the cluster)."""
    data = tmp_path.resolve()
    monkeypatch.setenv("FLASHSALE_DATA_DIR", str(data))
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    servers, overrides = embedded_programs(load(), data, nats_nodes=3)
    nodes = overrides["nats_url"].split(",")
    assert len(nodes) == 3
    assert main(["env"]) == 0  # no run yet: the single node
    assert f"export NATS_URL={shlex.quote(nodes[0])}\n" in capsys.readouterr().out
    write_conf(data / "supervisor", servers, [])  # as `flashsale dev --nats-cluster 3` does
    assert main(["env"]) == 0
    assert f"export NATS_URL={shlex.quote(overrides['nats_url'])}\n" in capsys.readouterr().out
