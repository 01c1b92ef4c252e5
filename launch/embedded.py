"""The embedded default: a real nats-server (JetStream, file storage) and a real PostgreSQL 16,
both from PyPI wheels, run on local ports under a data directory (launch/nats_server.py,
launch/postgres_server.py; their URLs and passwords: flashsale/urls.py).

Two ways to run each: `start_*` spawns a child and returns once it serves (test fixtures, the
bench); `run_*` becomes the server in the foreground (`flashsale embedded-nats` /
`embedded-postgres`, the programs `flashsale dev` hands to its supervisor, which restarts them).
Both write the same configuration and clear the same stale state first, so a server killed with
-9 starts again on its data. Production sets NATS_URL and DATABASE_URL to real clusters and never
runs these.

Both servers start with a scrubbed environment (`server_env`): the stack's environment holds
JWT secrets, the admin token and the other server's password, and a server must not be able to
hand them out (a superuser can read any file the postmaster can, /proc/<pid>/environ included).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# All the environment an embedded server gets: where binaries and libraries are, the locale and
# the time zone. Nothing of flashsale's settings, which hold secrets.
SERVER_ENV_NAMES = ("PATH", "LD_LIBRARY_PATH", "TMPDIR", "TZ", "LANG", "LC_ALL", "LC_CTYPE",
                    "LC_MESSAGES")
STOP_TIMEOUT_S = 15.0  # for a server to exit after its stop signal, before SIGKILL


def server_env() -> dict[str, str]:
    """The scrubbed environment of an embedded server (and of its initdb and single-user runs)."""
    return {name: os.environ[name] for name in SERVER_ENV_NAMES if name in os.environ}


def write_secret(path: Path, text: str) -> None:
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

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        if self.proc.poll() is not None:
            return
        # Postgres: SIGINT is "fast shutdown" (abort transactions, checkpoint, exit).
        self.proc.send_signal(signal.SIGINT if self.name == "postgres" else signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
