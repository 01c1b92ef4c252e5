"""A process started by hand, outside the supervisor: without the servers' credentials it ends at
once with one line saying how to get them (`flashsale env`), and while it waits for a server
that is not there it still stops on SIGTERM."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from config.settings import REPO_ROOT, Settings, to_env
from flashsale.urls import PASSWORD_FILE, PG_SERVICE_ROLE, SERVICE_PASSWORD_FILE, nats_url, postgres_url


def _without_credentials(settings: Settings, which: str) -> Settings:
    """The settings with the password taken out of one server's URL."""
    url = re.sub(r"(//[^:/@]*):[^@/]*@", r"\1@", getattr(settings, which))
    return msgspec.structs.replace(settings, **{which: url})


def _start(settings: Settings, *argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, **to_env(msgspec.structs.replace(settings, committer_metrics_port=0))}
    return subprocess.Popen([sys.executable, "-m", *argv], env=env, cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize(("which", "argv"), [
    ("nats_url", ["committer", "--shard", "0"]),
    ("database_url", ["committer", "--shard", "0"]),
    ("nats_url", ["gateway"]),
    ("database_url", ["gateway"]),
    ("nats_url", ["ingest"]),
    ("database_url", ["ingest"]),
])
def test_without_credentials_a_process_ends_at_once_with_one_line(settings: Settings, which, argv):
    proc = _start(_without_credentials(settings, which), *argv)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    line = stderr.strip().splitlines()[-1]
    print(line)
    assert "refused this process's credentials" in line and "flashsale env" in line
    assert "Traceback" not in stderr


def test_a_process_waiting_for_an_absent_server_stops_on_sigterm(settings: Settings):
    proc = _start(msgspec.structs.replace(settings, nats_url="nats://127.0.0.1:1"),
                  "committer", "--shard", "0")
    time.sleep(3)  # well into its connection attempts
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, stderr = proc.communicate(timeout=10)
    print(f"stopped {time.monotonic() - sent:.2f} s after SIGTERM")
    assert proc.returncode == 0
    assert '"nats lost"' in stderr  # it said why it was waiting


def test_flashsale_env_hands_out_the_embedded_servers_credentials(tmp_path: Path):
    data = tmp_path / "data"
    for server, file, secret in (("nats", PASSWORD_FILE, "n-secret"), ("postgres", PASSWORD_FILE, "p-secret"),
                                 ("postgres", SERVICE_PASSWORD_FILE, "s-secret")):
        (data / server).mkdir(parents=True, exist_ok=True)
        (data / server / file).write_text(secret + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env.update(FLASHSALE_DATA_DIR=str(data), FLASHSALE_NATS_PORT="14001", FLASHSALE_PG_PORT="14002")
    out = subprocess.run([sys.executable, "-m", "launch", "env"], env=env, capture_output=True,
                         text=True, timeout=30, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    exported = dict(shlex.split(line)[1].split("=", 1) for line in out.stdout.splitlines())
    assert exported == {"NATS_URL": nats_url(14001, "n-secret"),
                        "DATABASE_URL": postgres_url(14002, user=PG_SERVICE_ROLE, password="s-secret")}
