"""The embedded PostgreSQL 16 (from the pgserver wheel): initdb on first use, stale state of an
earlier run cleared, the superuser's and the service role's generated passwords set and required,
then started as a child (`start_postgres`) or become in the foreground under a supervisor
(`run_postgres`). Durable settings: fsync and synchronous_commit stay on."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from flashsale.ports import free_port, wait_for_port
from flashsale.urls import (
    PASSWORD_FILE,
    PG_SERVICE_ROLE,
    PG_SUPERUSER,
    SERVICE_PASSWORD_FILE,
    password,
    postgres_url,
)
from launch import procfs
from launch.embedded import Embedded, server_env, write_secret

PG_SYSTEM_USER = "pgserver"  # postgres refuses to run as root; pgserver uses this name too
LISTEN_TIMEOUT_S = 60.0  # for a started postmaster to listen on its port
READY_TIMEOUT_S = 60.0  # then for pg_isready to say it accepts connections
READY_POLL_INTERVAL_S = 0.1
FAST_SHUTDOWN_GRACE_S = 15.0  # for a stale postmaster to exit on SIGINT (fast shutdown)
STALE_GRACE_S = 10.0  # for its children to follow it, and for SIGKILLed backends to be gone
@dataclass(frozen=True)
class RunAs:
    """The unprivileged user postgres runs as when we are root."""

    uid: int
    gid: int


def _pg_bin(name: str) -> str:
    import pgserver  # the wheel ships PostgreSQL 16 binaries under pgserver/pginstall/bin

    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / name)


def _pg_user(data_dir: Path) -> RunAs | None:
    """As root, run postgres as an unprivileged user that can reach the binaries and the data."""
    if os.geteuid() != 0:
        return None
    import stat

    import pgserver
    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    entry = ensure_user_exists(PG_SYSTEM_USER)
    if entry is None:
        raise RuntimeError(f"could not create the system user {PG_SYSTEM_USER!r} for postgres")
    install = Path(pgserver.__file__).parent / "pginstall"
    ensure_prefix_permissions(install / "bin")
    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(install / "bin", read | execute)
    ensure_folder_permissions(install / "lib", read)
    ensure_folder_permissions(install / "share", read)
    ensure_prefix_permissions(data_dir)
    for path in [data_dir, *data_dir.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return RunAs(entry.pw_uid, entry.pw_gid)


def _pid_in(lock_file: Path) -> int | None:
    """The pid on the first line of a postgres lock file (postmaster.pid, .s.PGSQL.N.lock)."""
    try:
        return int(lock_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def clear_stale_postgres(pgdata: Path, socket_dir: Path) -> None:
    """Make the data directory startable after a crash of an earlier postmaster.

    A postmaster and all its children run with the data directory as working directory; that is
    how they are found, whatever postmaster.pid says. A live postmaster (an earlier run whose
    parent was killed) is shut down cleanly. Backends left behind by a postmaster killed with -9
    still hold its shared memory, and postgres refuses to start while they do: they are killed.
    Lock files are removed only once no postgres of this data directory is alive."""
    postmaster = _pid_in(pgdata / "postmaster.pid")
    if (postmaster is not None and procfs.proc_state(postmaster) == "Z"
            and procfs.comm(postmaster) == "postgres"):
        procfs.reap(postmaster)  # our own killed child: a zombie still has its pid and blocks the lock
    running = procfs.live_pids("postgres", where=pgdata)
    if postmaster in running:
        # SIGINT: fast shutdown, then its children exit
        procfs.end([postmaster], signal.SIGINT, FAST_SHUTDOWN_GRACE_S)
        procfs.wait_gone(running, STALE_GRACE_S)
    procfs.end(procfs.live_pids("postgres", where=pgdata), signal.SIGKILL, STALE_GRACE_S)
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    for lock in socket_dir.glob(".s.PGSQL.*.lock"):
        owner = _pid_in(lock)
        if owner is None or not procfs.is_running("postgres", owner):
            lock.unlink(missing_ok=True)
            (socket_dir / lock.name.removesuffix(".lock")).unlink(missing_ok=True)


# The whole client authentication of the embedded postgres, written at every start: every
# connection proves the password (SCRAM-SHA-256), over the unix socket in the data directory and
# over TCP on loopback, the only address it listens on. Nothing else may connect.
PG_HBA = """\
# Written by launch.postgres_server at every start (edits are overwritten).
local  all  all                scram-sha-256
host   all  all  127.0.0.1/32  scram-sha-256
"""


def _write_for_postgres(path: Path, text: str, run_as: RunAs | None) -> None:
    write_secret(path, text)
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)


def _set_passwords(pgdata: Path, secret: str, service_secret: str, run_as: RunAs | None) -> None:
    """Give the superuser and the service role their generated passwords, in single-user mode (no
    server listens, so no client can come in before they are set); the service role is created
    on first use, and kept to LOGIN only. The password files are the truth: this runs at every
    start, also turning a data directory that trusts its clients into one that asks."""
    # One statement per line (single-user mode); the passwords are URL-safe: no quote inside.
    # password_encryption is scram-sha-256 (the default): the server stores a verifier.
    statements = [
        f"ALTER ROLE {PG_SUPERUSER} PASSWORD '{secret}';",
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PG_SERVICE_ROLE}') "
        f"THEN CREATE ROLE {PG_SERVICE_ROLE}; END IF; END $$;",
        f"ALTER ROLE {PG_SERVICE_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
        f"NOBYPASSRLS PASSWORD '{service_secret}';",
    ]
    done = subprocess.run(
        [_pg_bin("postgres"), "--single", "-D", str(pgdata), "-c", "log_min_messages=error",
         "postgres"],
        input="".join(f"{line}\n" for line in statements),
        capture_output=True, text=True, env=server_env(),
        user=None if run_as is None else run_as.uid, group=None if run_as is None else run_as.gid,
    )
    if done.returncode != 0 or "ERROR:" in done.stderr or "FATAL:" in done.stderr:
        raise RuntimeError(f"setting the postgres password failed ({done.returncode}): {done.stderr}")


def _postgres_argv(data_dir: Path, port: int, run_as: RunAs | None, secret: str,
                   service_secret: str) -> list[str]:
    """initdb on first use, stale state cleared, the password set and required, and the postgres
    command line. Durable settings: fsync and synchronous_commit stay on (a committed batch
    survives a crash)."""
    pgdata = data_dir / "pgdata"
    if not pgdata.exists():
        # Into a scratch directory first: an initdb that fails or is killed half-way must not
        # leave a data directory that looks initialised.
        scratch = data_dir / "pgdata.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        done = subprocess.run(
            [_pg_bin("initdb"), "-D", str(scratch), "-U", PG_SUPERUSER, "--auth=scram-sha-256",
             f"--pwfile={data_dir / PASSWORD_FILE}", "--encoding=UTF8", "--no-instructions"],
            capture_output=True, text=True, env=server_env(),
            user=None if run_as is None else run_as.uid, group=None if run_as is None else run_as.gid,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stdout}{done.stderr}")
        _write_for_postgres(scratch / "pg_hba.conf", PG_HBA, run_as)
        scratch.rename(pgdata)
    clear_stale_postgres(pgdata, socket_dir=data_dir)
    hba = pgdata / "pg_hba.conf"
    if hba.read_text() != PG_HBA:
        print(f"flashsale: {hba} was not flashsale's (it may let clients in without a password): "
              f"replaced; clients need the one in {data_dir / PASSWORD_FILE}", file=sys.stderr, flush=True)
    _set_passwords(pgdata, secret, service_secret, run_as)
    _write_for_postgres(hba, PG_HBA, run_as)
    return [
        _pg_bin("postgres"), "-D", str(pgdata), "-p", str(port), "-h", "127.0.0.1",
        "-k", str(data_dir),
        "-c", "max_connections=300",
        "-c", "shared_buffers=256MB",
        "-c", "fsync=on",
        "-c", "synchronous_commit=on",
        "-c", "full_page_writes=on",
    ]


def start_postgres(data_dir: Path, port: int | None = None, database: str = "flashsale") -> Embedded:
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    # Before _pg_user, which hands the data directory to postgres.
    secret, service_secret = password(data_dir), password(data_dir, SERVICE_PASSWORD_FILE)
    run_as = _pg_user(data_dir)
    argv = _postgres_argv(data_dir, port, run_as, secret, service_secret)
    log_path = data_dir / "postgres.log"
    with open(log_path, "ab") as log:
        if run_as is not None:
            os.chown(log_path, run_as.uid, run_as.gid)
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=server_env(),
            user=None if run_as is None else run_as.uid, group=None if run_as is None else run_as.gid,
        )
    wait_for_port(port, LISTEN_TIMEOUT_S, proc)
    _wait_pg_ready(port, proc)
    return Embedded("postgres", proc, postgres_url(port, database, secret), port, log_path)


def run_postgres(data_dir: Path, port: int) -> NoReturn:
    """Become the embedded postmaster (logging to stdout) for a supervisor to watch."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Before _pg_user, which hands the data directory to postgres.
    secret, service_secret = password(data_dir), password(data_dir, SERVICE_PASSWORD_FILE)
    run_as = _pg_user(data_dir)
    argv = _postgres_argv(data_dir, port, run_as, secret, service_secret)
    sys.stdout.flush()
    if run_as is not None:
        os.setgroups([])
        os.setgid(run_as.gid)
        os.setuid(run_as.uid)
    os.execve(argv[0], argv, server_env())


def postgres_ready(port: int) -> bool:
    ready = subprocess.run(
        [_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_SUPERUSER],
        capture_output=True,
    )
    return ready.returncode == 0


def _wait_pg_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}")
        if postgres_ready(port):
            return
        time.sleep(READY_POLL_INTERVAL_S)
    raise TimeoutError("postgres did not become ready")
