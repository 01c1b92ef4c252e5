"""The Procfile under supervisord: which programs `flashsale dev` runs, in which order they stop,
how they are restarted, and how the supervisor itself is watched.

The Procfile stays the one list of processes operators edit; this turns it (plus the embedded
servers) into a supervisord configuration. supervisord restarts a program that exits, waiting 1 s,
2 s, 3 s ... between attempts while it keeps dying within `START_S`, and gives up (FATAL) after
`START_RETRIES` such attempts; every other program keeps running meanwhile.

Stops go in dependency order, one role at a time, each bounded by `STOP_WAIT_S`: ingest (no new
purchases), gateways (their payments drain), committers, then everything else (the fake PSP),
then the embedded servers. supervisord stops the highest priority number first and waits until
that whole priority is down before the next (`PRIORITY`).

Ingest is stateless and its processes share one port (SO_REUSEPORT): each ingest line runs
`ingest_count` times (the `ingest_processes` setting; by default one per CORES_PER_INGEST cores),
named `ingest`, `ingest-2`, ..., each with its own /metrics port (`instance_port`).

Nothing serves unwatched: each program gets SIGTERM when supervisord dies (PR_SET_PDEATHSIG, set by
util-linux `setpriv` before the program starts), and `flashsale dev`, supervisord's parent, sees
it die, ends whatever is left of each program's process group (`end_groups`) and exits.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import shlex
import shutil
import signal
import time
import xmlrpc.client
from pathlib import Path
from typing import IO, Literal, cast

from supervisor.xmlrpc import SupervisorTransport

from config.errors import SettingsError
from config.settings import REPO_ROOT, Settings

START_S = 2  # a program that lives this long counts as started (its backoff starts again from 1 s)
START_RETRIES = 30  # quick deaths in a row before supervisord gives up: 1 + 2 + ... + 30 s ≈ 8 min
STOP_WAIT_S = 15  # after the stop signal, SIGKILL to the program's process group
# Exit codes that mean "a human must look first": committer's EXIT_CORRUPT (it refused to break a
# money invariant; docs/operations.md). Every other exit, 0 included, is restarted.
NO_RESTART_EXIT_CODES = (4,)

# What a program is to the others, read from its command line: it decides the stop order.
Role = Literal["server", "ingest", "gateway", "committer", "other"]
# supervisord starts the lowest number first and stops the highest first: servers start first
# and stop last; ingest, which takes purchases in, stops first.
PRIORITY: dict[Role, int] = {"server": 100, "other": 200, "committer": 300, "gateway": 400, "ingest": 500}
_ROLE = re.compile(r"(?:^|\s)-m\s+(ingest|gateway|committer)(?:\s|$)")  # `-m gateway.fakepsp`: other

_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")  # the format honcho and foreman read
# A program name first (not an assignment `A=b cmd`, not `{`, `!` or a subshell), then arguments.
_SIMPLE_COMMAND = re.compile(r"[A-Za-z0-9_./-]+(\s.*)?", re.S)
_PROGRAM_SECTION = re.compile(r"^\[program:([^\]]+)\]$", re.MULTILINE)  # as `_program` writes it
_PORT_OPTION = re.compile(r"--[a-z-]*port[= ](\d+)\b")
_SHARD_OPTION = re.compile(r"--shard[= ](\d+)\b")


@dataclasses.dataclass(frozen=True)
class Program:
    name: str
    command: str  # a shell command line, as in a Procfile
    stop_signal: Literal["TERM", "INT"] = "TERM"
    role: Role | None = None  # None: read from the command
    env: tuple[tuple[str, str], ...] = ()  # set for this program only, over the common environment

    @property
    def runs_as(self) -> Role:
        if self.role is not None:
            return self.role
        found = _ROLE.search(self.command)
        return cast(Role, found[1]) if found else "other"

    @property
    def ports(self) -> list[int]:
        """The ports its command line names (--port, --metrics-port, --status-port ...) and
        those its own environment sets (FLASHSALE_..._PORT)."""
        return [int(p) for p in _PORT_OPTION.findall(self.command)] + [
            int(v) for k, v in self.env if k.endswith("_PORT") and v.isdigit() and int(v)]


# Cores per ingest process when `ingest_processes` is 0. Each ingest batches only its own
# intents, so a second process halves the batches (and doubles the fsyncs per purchase); it pays
# only where ingest's CPU, not the store's latency, limits and there are cores to spare beside
# nats-server, Postgres and the committers. On 2 cores a second ingest cost a third of the
# accepted path's throughput (docs/benchmarks.md, "Ingest processes").
CORES_PER_INGEST = 4
_INGEST_METRICS_PORT_ENV = "FLASHSALE_INGEST_METRICS_PORT"


def ingest_count(settings: Settings) -> int:
    """How many ingest processes share `ingest_port`: `ingest_processes`, or with 0 one per
    CORES_PER_INGEST cores of this box (at least one)."""
    if settings.ingest_processes < 0:
        raise SettingsError(f"setting ingest_processes: {settings.ingest_processes} is below 0")
    return settings.ingest_processes or max(1, (os.cpu_count() or 1) // CORES_PER_INGEST)


def instance_name(name: str, i: int) -> str:
    """Process `i` (from 0) of several run from one line: name, name-2, name-3, ..."""
    return name if i == 0 else f"{name}-{i + 1}"


def instance_port(port: int, i: int) -> int:
    """Process `i`'s own status or metrics port: `port` + i (a scrape must reach one process,
    so these are never shared); 0 (none) stays 0."""
    return port + i if port else 0


def with_ingests(app: list[Program], count: int, metrics_port: int) -> list[Program]:
    """`app` with every ingest line run `count` times on the shared ingest port, as
    `instance_name`s, each serving /metrics and /readyz on its own `instance_port` of
    `metrics_port`."""
    out: list[Program] = []
    ingests = 0
    for p in app:
        if p.runs_as != "ingest" or count <= 1:
            out.append(p)
            continue
        for i in range(count):
            port = instance_port(metrics_port, ingests)
            ingests += 1
            out.append(dataclasses.replace(p, name=instance_name(p.name, i),
                                           env=(*p.env, (_INGEST_METRICS_PORT_ENV, str(port)))))
    return out


def ingest_metrics_port(p: Program, settings: Settings) -> int:
    """The ingest_metrics_port ingest program `p` runs with (0: none): its own, where it is one
    of several (`with_ingests`), else the settings'."""
    return int(dict(p.env).get(_INGEST_METRICS_PORT_ENV, settings.ingest_metrics_port))


def committer_shards(app: list[Program]) -> dict[int, list[str]]:
    """shard -> the programs that run a committer for it: the first writes, the others stand by
    (whichever holds the shard's lease writes; the rest wait for it to expire)."""
    shards: dict[int, list[str]] = {}
    for p in app:
        found = _SHARD_OPTION.search(p.command)
        if p.runs_as == "committer" and found:
            shards.setdefault(int(found[1]), []).append(p.name)
    return shards


def procfile_programs(procfile: Path) -> list[Program]:
    programs = []
    for line in procfile.read_text().splitlines():
        match = _PROCFILE_LINE.match(line.strip())
        if match:
            programs.append(Program(match[1], match[2].strip()))
    return programs


def app_programs(procfile: Path, settings: Settings) -> list[Program]:
    """What runs of the Procfile: its lines, each ingest line `ingest_count` times."""
    return with_ingests(procfile_programs(procfile), ingest_count(settings), settings.ingest_metrics_port)


def conf_path(state_dir: Path) -> Path:
    return state_dir / "supervisord.conf"


def conf_programs(state_dir: Path) -> list[str]:
    """The programs of the supervisord.conf under `state_dir` (none: no conf written yet)."""
    try:
        conf = conf_path(state_dir).read_text()
    except FileNotFoundError:
        return []
    return _PROGRAM_SECTION.findall(conf)


def write_conf(state_dir: Path, servers: list[Program], app: list[Program],
               app_autostart: bool = False) -> Path:
    """supervisord.conf under `state_dir`: `servers` start at once, `app` on demand (`start`)
    unless `app_autostart`; each program stops in its role's turn (`PRIORITY`). Programs log to
    supervisord's stdout; supervisorctl reaches it on a unix socket there."""
    state_dir.mkdir(parents=True, exist_ok=True)
    sock = state_dir / "supervisor.sock"
    sections = [
        f"""[supervisord]
nodaemon=true
logfile={state_dir / "supervisord.log"}
loglevel=info
pidfile={state_dir / "supervisord.pid"}
childlogdir={state_dir}

[unix_http_server]
file={sock}
chmod=0700

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{sock}
"""
    ]
    sections += [_program(dataclasses.replace(p, role="server"), True) for p in servers]
    sections += [_program(p, app_autostart) for p in app]
    conf = conf_path(state_dir)
    conf.write_text("\n".join(sections))
    return conf


def shell_command(line: str) -> str:
    """A shell runs the line, as under honcho. A line that is one simple command is exec'd, so
    that the program itself is the supervised pid (kill -9 of it is seen at once); a line with
    shell control syntax keeps its shell, and stopasgroup/killasgroup reach its children."""
    simple = _SIMPLE_COMMAND.fullmatch(line) and not any(c in line for c in ";&|()\n")
    return f"/bin/sh -c {shlex.quote(('exec ' if simple else '') + line)}"


def dies_with_supervisor(command: str) -> str:
    """The command, set to get SIGTERM when its parent (supervisord) dies, by util-linux `setpriv`
    (the setting survives exec). Without setpriv the command is unchanged: `flashsale dev` still
    ends the process groups of a dead supervisord."""
    setpriv = shutil.which("setpriv")
    return f"{setpriv} --pdeathsig TERM -- {command}" if setpriv else command


def _program(p: Program, autostart: bool) -> str:
    # supervisord expands %(name)s: % is escaped.
    command = dies_with_supervisor(shell_command(p.command)).replace("%", "%%")
    env = ",".join(f'{k}="{v}"' for k, v in p.env).replace("%", "%%")
    return f"""[program:{p.name}]
command={command}
{f"environment={env}" if env else ""}
directory={REPO_ROOT}
autostart={str(autostart).lower()}
priority={PRIORITY[p.runs_as]}
autorestart=unexpected
exitcodes={",".join(map(str, NO_RESTART_EXIT_CODES))}
startsecs={START_S}
startretries={START_RETRIES}
stopsignal={p.stop_signal}
stopwaitsecs={STOP_WAIT_S}
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
"""


# --- one run per data directory ---------------------------------------------------------------


class AlreadyRunning(RuntimeError):
    """Another `flashsale dev` holds the data directory."""


def hold_data_dir(data: Path) -> IO[str]:
    """An exclusive flock on `<data>/dev.lock`, held as long as the returned file (and any process
    it is handed to, such as supervisord) stays open; the file names the holder's pid. Raises
    AlreadyRunning while another run holds it: two runs on one data directory would fight over
    its servers' files and ports."""
    data.mkdir(parents=True, exist_ok=True)
    lock = open(data / "dev.lock", "a+")  # noqa: SIM115 -- held open for the run's lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise AlreadyRunning(f"another `flashsale dev` (pid {holder}) runs on {data}: stop it "
                             "first (Ctrl-C there), or give this one its own FLASHSALE_DATA_DIR "
                             "and ports") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


# --- supervisord, seen from `flashsale dev` ---------------------------------------------------

RUNNING = "RUNNING"  # supervisord's state of a program that stayed up START_S


class Supervisor:
    """supervisord's XML-RPC interface on its unix socket (what supervisorctl uses)."""

    def __init__(self, state_dir: Path) -> None:
        transport = SupervisorTransport("", "", f"unix://{state_dir / 'supervisor.sock'}")
        self._rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def start(self, names: list[str]) -> None:
        """Ask supervisord to start each (not waiting: `states` shows when they run)."""
        for name in names:
            try:
                self._rpc.supervisor.startProcess(name, False)
            except xmlrpc.client.Fault as e:
                if "ALREADY_STARTED" not in e.faultString:
                    raise

    def states(self) -> dict[str, tuple[str, int]]:
        """program -> (state name, pid; 0 when not running)."""
        infos = cast(list[dict[str, object]], self._rpc.supervisor.getAllProcessInfo())
        return {str(i["name"]): (str(i["statename"]), cast(int, i["pid"])) for i in infos}


def end_groups(groups: dict[str, int], grace_s: float = STOP_WAIT_S) -> list[str]:
    """SIGTERM to each program's process group (supervisord makes each program a group leader,
    pgid = its pid), in the given order, each given `grace_s` to go; SIGKILL to what stays.
    Returns the names of the groups that had to be killed."""
    killed = []
    for name, pgid in groups.items():
        if not _signal_group(pgid, signal.SIGTERM):
            continue
        deadline = time.monotonic() + grace_s
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_alive(pgid) and _signal_group(pgid, signal.SIGKILL):
            killed.append(name)
    return killed


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    """Any live (not zombie) process in the group."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            return True
    return False
