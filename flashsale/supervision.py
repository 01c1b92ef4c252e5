"""The Procfile under supervisord: which programs `flashsale dev` runs and how they are restarted.

The Procfile stays the one list of processes operators edit; this turns it (plus the embedded
servers) into a supervisord configuration. supervisord restarts a program that exits, waiting 1 s,
2 s, 3 s ... between attempts while it keeps dying within `START_S`, and gives up (FATAL) after
`START_RETRIES` such attempts; every other program keeps running meanwhile.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from config.settings import REPO_ROOT

APP_GROUP = "app"  # the Procfile's programs: started once schema, streams and durability are checked
START_S = 2  # a program that lives this long counts as started (its backoff starts again from 1 s)
START_RETRIES = 30  # quick deaths in a row before supervisord gives up: 1 + 2 + ... + 30 s ≈ 8 min
STOP_WAIT_S = 15  # after the stop signal, SIGKILL to the program's process group
# Exit codes that mean "a human must look first": committer's EXIT_CORRUPT (it refused to break a
# money invariant; docs/operations.md). Every other exit, 0 included, is restarted.
NO_RESTART_EXIT_CODES = (4,)

_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")  # the format honcho and foreman read
# A program name first (not an assignment `A=b cmd`, not `{`, `!` or a subshell), then arguments.
_SIMPLE_COMMAND = re.compile(r"[A-Za-z0-9_./-]+(\s.*)?", re.S)


@dataclass(frozen=True)
class Program:
    name: str
    command: str  # a shell command line, as in a Procfile
    stop_signal: Literal["TERM", "INT"] = "TERM"


def procfile_programs(procfile: Path) -> list[Program]:
    programs = []
    for line in procfile.read_text().splitlines():
        match = _PROCFILE_LINE.match(line.strip())
        if match:
            programs.append(Program(match[1], match[2].strip()))
    return programs


def conf_path(state_dir: Path) -> Path:
    return state_dir / "supervisord.conf"


def write_conf(state_dir: Path, servers: list[Program], app: list[Program],
               app_autostart: bool = False) -> Path:
    """supervisord.conf under `state_dir`: `servers` start at once, `app` (group "app") on demand
    unless `app_autostart`. Programs log to supervisord's stdout; supervisorctl reaches it on a
    unix socket there."""
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
    # Servers start first and stop last (supervisord stops the highest priority number first).
    for autostart, priority, programs in ((True, 100, servers), (app_autostart, 500, app)):
        sections += [_program(p, autostart, priority) for p in programs]
    if app:
        sections.append(f"[group:{APP_GROUP}]\nprograms={','.join(p.name for p in app)}\n")
    conf = conf_path(state_dir)
    conf.write_text("\n".join(sections))
    return conf


def shell_command(line: str) -> str:
    """A shell runs the line, as under honcho. A line that is one simple command is exec'd, so
    that the program itself is the supervised pid (kill -9 of it is seen at once); a line with
    shell control syntax keeps its shell, and stopasgroup/killasgroup reach its children."""
    simple = _SIMPLE_COMMAND.fullmatch(line) and not any(c in line for c in ";&|()\n")
    return f"/bin/sh -c {shlex.quote(('exec ' if simple else '') + line)}"


def _program(p: Program, autostart: bool, priority: int) -> str:
    command = shell_command(p.command).replace("%", "%%")  # supervisord expands %(name)s
    return f"""[program:{p.name}]
command={command}
directory={REPO_ROOT}
autostart={str(autostart).lower()}
priority={priority}
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
