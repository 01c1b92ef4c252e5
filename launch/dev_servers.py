"""The embedded servers under `flashsale dev`: the programs that run them (a single NATS node or
a local cluster, and Postgres), the settings that point every process at them with their
generated credentials, and the commands those programs are (`flashsale embedded-nats`, ...)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import msgspec

from config.settings import Settings, load
from flashsale.supervision import Program, app_programs, conf_programs, write_conf
from flashsale.urls import (
    PG_SERVICE_ROLE,
    SERVICE_PASSWORD_FILE,
    monitor_url,
    nats_url,
    password,
    postgres_url,
)
from launch.cluster import dev_node_ports, run_node
from launch.nats_server import run_nats
from launch.postgres_server import run_postgres

NATS_NODE_PREFIX = "nats-n"  # the programs of `dev --nats-cluster N`: nats-n1, nats-n2, ...


def embedded_urls(settings: Settings, data: Path, environ: dict[str, str] | None = None,
                  nats_nodes: int = 1) -> dict[str, str]:
    """The settings that point a process at the embedded servers under `data` (those that
    NATS_URL / DATABASE_URL in `environ`, the process's environment by default, do not replace),
    with their generated credentials. `nats_nodes` > 1: every node of a local cluster."""
    environ = dict(os.environ) if environ is None else environ
    overrides = {}
    if "NATS_URL" not in environ:
        secret = password(data / "nats")
        ports = [n.client for n in dev_node_ports(nats_nodes, settings.nats_port, settings.nats_monitor_port)]
        overrides["nats_url"] = ",".join(nats_url(port, secret) for port in ports)
        overrides["nats_monitor_url"] = monitor_url(settings.nats_monitor_port)
    if "DATABASE_URL" not in environ:
        pg = data / "postgres"
        overrides["database_url"] = postgres_url(settings.pg_port, user=PG_SERVICE_ROLE,
                                                 password=password(pg, SERVICE_PASSWORD_FILE))
        overrides["database_admin_url"] = postgres_url(settings.pg_port, password=password(pg))
    return overrides


def dev_nats_nodes(data: Path) -> int:
    """How many NATS nodes the latest `flashsale dev` under `data` runs: the supervisord.conf it
    wrote has a program per node of a local cluster (1: a single node, or no run yet)."""
    nodes = [p for p in conf_programs(data / "supervisor") if p.startswith(NATS_NODE_PREFIX)]
    return max(1, len(nodes))


def settings_next_to_dev() -> Settings:
    """The settings of a command run next to `flashsale dev` (schema, load-sale, set-sku,
    reconcile, env): its embedded servers, every node of its NATS cluster, with their
    credentials, unless the environment names others."""
    settings = load()
    data = Path(settings.data_dir).resolve()
    return msgspec.structs.replace(settings, **embedded_urls(settings, data, nats_nodes=dev_nats_nodes(data)))


def embedded_programs(settings: Settings, data: Path,
                      nats_nodes: int = 1) -> tuple[list[Program], dict[str, str]]:
    """Programs for the embedded servers that NATS_URL / DATABASE_URL do not replace, and the
    settings that point every process at them. The credentials exist before the servers start:
    `embedded_urls` creates them, and the servers find them in the same directories.
    `nats_nodes` > 1: a local NATS cluster of that many nodes instead of the single node."""
    me = f"{shlex.quote(sys.executable)} -m launch"
    servers = []
    overrides = embedded_urls(settings, data, nats_nodes=nats_nodes)
    if "nats_url" in overrides and nats_nodes > 1:
        servers += [Program(f"{NATS_NODE_PREFIX}{i + 1}", f"{me} embedded-nats-node --node {i} "
                            f"--size {nats_nodes} --data-dir {shlex.quote(str(data / 'nats-cluster'))}",
                            role="server") for i in range(nats_nodes)]
    elif "nats_url" in overrides:
        servers.append(Program("nats", f"{me} embedded-nats --data-dir {shlex.quote(str(data / 'nats'))} "
                                       f"--port {settings.nats_port} "
                                       f"--monitor-port {settings.nats_monitor_port}", role="server"))
    if "database_url" in overrides:
        servers.append(Program("postgres", f"{me} embedded-postgres --data-dir "
                                           f"{shlex.quote(str(data / 'postgres'))} --port {settings.pg_port}",
                               stop_signal="INT", role="server"))  # SIGINT: postgres's fast shutdown
    return servers, overrides


def cmd_embedded_nats(args: argparse.Namespace) -> int:
    """What `dev` supervises: stale state cleared, then the process becomes nats-server."""
    s = load()
    run_nats(Path(args.data_dir or Path(s.data_dir) / "nats"), args.port or s.nats_port,
             args.monitor_port or s.nats_monitor_port)


def cmd_embedded_nats_node(args: argparse.Namespace) -> int:
    """What `dev --nats-cluster N` supervises: one node; it becomes nats-server."""
    s = load()
    run_node(Path(args.data_dir or Path(s.data_dir) / "nats-cluster"), args.node,
             dev_node_ports(args.size, s.nats_port, s.nats_monitor_port), Path(s.data_dir) / "nats")


def cmd_embedded_postgres(args: argparse.Namespace) -> int:
    """What `dev` supervises: stale state cleared, then the process becomes the postmaster."""
    s = load()
    run_postgres(Path(args.data_dir or Path(s.data_dir) / "postgres"), args.port or s.pg_port)


def cmd_supervisord_conf(args: argparse.Namespace) -> int:
    """For production: the Procfile's programs only, started at once, restarted like under dev."""
    conf = write_conf(Path(args.dir).resolve(), [], app_programs(Path(args.procfile), load()),
                      app_autostart=True)
    print(f"{conf}: run it with `supervisord -c {conf}` (settings from the environment)")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """Shell lines that point a process started by hand at `flashsale dev`'s servers, with their
    credentials: `eval "$(.venv/bin/flashsale env)"`, then e.g. `python -m committer --shard 0`."""
    settings = settings_next_to_dev()
    for name, value in (("NATS_URL", settings.nats_url), ("DATABASE_URL", settings.database_url)):
        print(f"export {name}={shlex.quote(value)}")
    return 0
