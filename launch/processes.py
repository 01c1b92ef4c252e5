"""Launchers for tests, chaos and the bench: every flashsale process (and the fake PSP) as a
real OS process, since kill -9 must be real. The one home of these helpers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from config.settings import REPO_ROOT, Settings, to_env
from flashsale.ports import free_port, wait_http_ok


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None  # None: not started yet

    def start(self) -> Process:
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                start_new_session=True,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None and self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_http_ok(self, url: str, timeout_s: float = 30.0) -> None:
        ended = wait_http_ok(url, timeout_s, lambda: self.alive)
        if ended == "exited":
            raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
        if ended == "timeout":
            raise TimeoutError(f"{self.name} not ready at {url}:\n{self.log_tail()}")


def python_module(
    name: str, module: str, args: list[str], settings: Settings, log_dir: Path,
    extra_env: dict[str, str] | None = None,
) -> Process:
    env = {**os.environ, **to_env(settings), **(extra_env or {})}
    env.pop("FLASHSALE_CONFIG", None)
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return Process(name, [sys.executable, "-m", module, *args], env, Path(log_dir) / f"{name}.log")


def ingest(settings: Settings, log_dir: Path, name: str = "ingest") -> Process:
    return python_module(name, "ingest", [], settings, log_dir)


def committer(
    settings: Settings, shard: int, log_dir: Path, name: str | None = None,
    status_port: int | None = None,
) -> Process:
    args = ["--shard", str(shard)]
    if status_port is not None:
        args += ["--status-port", str(status_port)]
    return python_module(name or f"committer-{shard}", "committer", args, settings, log_dir)


def committer_status_port(settings: Settings, shard: int) -> int:
    return settings.committer_metrics_port + shard


def committer_ready_url(settings: Settings, shard: int, status_port: int | None = None) -> str:
    return f"http://127.0.0.1:{status_port or committer_status_port(settings, shard)}/readyz"


def ingest_ready_url(settings: Settings) -> str:
    return f"http://{settings.ingest_host}:{settings.ingest_port}/readyz"


def ingest_metrics_url(settings: Settings) -> str:
    """Ingest's /metrics: on its own loopback port, not on the public one."""
    if not settings.ingest_metrics_port:
        raise ValueError("ingest_metrics_port is 0: this ingest serves no /metrics")
    return f"http://127.0.0.1:{settings.ingest_metrics_port}/metrics"


def spare_port(settings: Settings) -> int:
    """A free port that is not one the committers will bind later (metrics base + shard)."""
    taken = range(settings.committer_metrics_port,
                  settings.committer_metrics_port + settings.shards + 1)
    while (port := free_port()) in taken:
        pass
    return port


def fakepsp_process(settings: Settings, log_dir: Path, *, port: int | None = None,
            name: str = "fakepsp", **rates: float) -> tuple[Process, str]:
    """A fake PSP process (not started) and its base URL. `rates`: latency_ms, decline_rate,
    timeout_rate, lost_rate, hang_s."""
    port = port or spare_port(settings)
    env = {f"FAKEPSP_{k.upper()}": str(v) for k, v in rates.items()}
    env["FAKEPSP_API_KEY"] = settings.psp_api_key
    p = python_module(name, "gateway.fakepsp", ["--port", str(port)], settings, log_dir, env)
    return p, f"http://127.0.0.1:{port}"


def gateway_process(settings: Settings, log_dir: Path, name: str = "gateway",
            metrics_port: int | None = None) -> Process:
    args = [] if metrics_port is None else ["--metrics-port", str(metrics_port)]
    return python_module(name, "gateway", args, settings, log_dir)


def gateway_ready_url(settings: Settings, metrics_port: int | None = None) -> str:
    return f"http://127.0.0.1:{metrics_port or settings.gateway_metrics_port}/readyz"
