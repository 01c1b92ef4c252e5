"""What `flashsale dev` checks: before it starts anything, the ports it will listen on are free
and the Procfile has one writing committer per shard (more lines for a shard stand by); before
it says ready, where each ingest process says it is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from config.settings import Settings
from flashsale.ports import port_open
from flashsale.supervision import Program, committer_shards, ingest_metrics_port
from launch.cluster import dev_node_ports
from launch.dev_servers import NATS_NODE_PREFIX


def wanted_ports(settings: Settings, servers: list[Program], app: list[Program]) -> dict[int, str]:
    """Every port this run will listen on: port -> the setting or program that names it."""
    wanted = {settings.ingest_port: "ingest_port"}
    for name in ("ingest_metrics_port", "gateway_metrics_port"):
        if getattr(settings, name):
            wanted[getattr(settings, name)] = name
    if settings.committer_metrics_port:
        for shard in range(settings.shards):
            wanted[settings.committer_metrics_port + shard] = f"committer_metrics_port + {shard}"
    names = {p.name for p in servers}
    if "nats" in names:
        wanted |= {settings.nats_port: "nats_port", settings.nats_monitor_port: "nats_monitor_port"}
    nodes = [n for n in names if n.startswith(NATS_NODE_PREFIX)]
    for i, node in enumerate(dev_node_ports(len(nodes), settings.nats_port, settings.nats_monitor_port)):
        wanted |= {node.client: f"nats node {i + 1} client", node.route: f"nats node {i + 1} route",
                   node.monitor: f"nats node {i + 1} monitor"}
    if "postgres" in names:
        wanted[settings.pg_port] = "pg_port"
    for p in app:
        wanted |= {port: f"Procfile {p.name}" for port in p.ports}
    return wanted


def ports_in_use(settings: Settings, servers: list[Program], app: list[Program],
                 in_use: Callable[[int], bool] = port_open) -> list[str]:
    """The ports this run will listen on that something already answers on (an earlier run that
    is still stopping, or another program): 'port (what)' for each."""
    wanted = wanted_ports(settings, servers, app)
    return [f"{port} ({what})" for port, what in sorted(wanted.items()) if in_use(port)]


def committer_warnings(settings: Settings, procfile: Path, app: list[Program]) -> list[str]:
    """One committer line per shard writes; more lines for a shard are its standbys. What an
    operator should know about the Procfile's committers, one line each."""
    shards = committer_shards(app)
    missing = [s for s in range(settings.shards) if s not in shards]
    extra = sorted(s for s in shards if s >= settings.shards)
    said = []
    if missing or extra:
        said.append(f"warning: {procfile} has no committer for shard(s) {missing or 'none'}"
                    f" and committers for shard(s) {extra or 'none'} outside the {settings.shards}"
                    " shards (FLASHSALE_SHARDS)")
    for shard, names in sorted(shards.items()):
        if len(names) > 1:
            said.append(f"shard {shard}: {', '.join(names)} (whichever holds the lease "
                        f"writes, the other{'s' if len(names) > 2 else ''} stand by)")
    own_port = {p.name for p in app if "--status-port" in p.command}
    for shard, names in shards.items():
        shared = [n for n in names if n not in own_port]
        if settings.committer_metrics_port and len(shared) > 1:
            said.append(f"warning: {', '.join(shared)} would share shard {shard}'s status "
                        "port: give standbys their own --status-port")
    return said


def ingest_readiness(settings: Settings, app: list[Program]) -> dict[str, str]:
    """What must say ready before `flashsale dev` does, what -> its /readyz URL: the public port,
    which any ingest process may answer (they share it), and each ingest process's own status
    port on loopback (its ingest_metrics_port), which only that one answers. A process without
    one (ingest_metrics_port 0) is seen through the public port only."""
    urls = {"ingest_port": f"http://{settings.ingest_host}:{settings.ingest_port}/readyz"}
    for p in app:
        port = ingest_metrics_port(p, settings) if p.runs_as == "ingest" else 0
        if port:
            urls[p.name] = f"http://127.0.0.1:{port}/readyz"  # ingest serves it on loopback only
    return urls
