"""`flashsale dev` (make run) as a real process: kill -9 of ingest, of the SKU's committer, of
nats-server and of the postmaster, one after the other. Each comes back under supervisord while
the others keep running, and purchases are decided again; every accepted purchase is decided in
the end. The unavailability window of each kill (kill -> next purchase decided) is printed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from config.settings import CONFIG_DIR, REPO_ROOT, load
from flashsale.embedded import free_port, free_port_block
from ingest.auth import dev_tokens
from proto.sharding import shard_of

pytestmark = pytest.mark.chaos

SKU = "chaos-sku"
SHARDS = 2
FINAL = {"confirmed", "rejected", "released", "cancelled", "expired"}


class Dev:
    """A `flashsale dev` process on free ports with its data in a temp dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ingest_port = free_port()
        self.committer_port = free_port_block(SHARDS)
        psp_port = free_port()
        # The repository's Procfile, with the fixed ports of gateway and fake PSP made free ones.
        procfile = (REPO_ROOT / "Procfile").read_text()
        procfile = re.sub(r"--metrics-port \d+", f"--metrics-port {free_port()}", procfile)
        procfile = re.sub(r"--port \d+", f"--port {psp_port}", procfile)
        procfile = procfile.replace("data/fakepsp-ledger.json", str(root / "fakepsp-ledger.json"))
        self.procfile = root / "Procfile"
        self.procfile.write_text(procfile)
        env = {k: v for k, v in os.environ.items()
               if k not in ("NATS_URL", "DATABASE_URL", "PSP_URL", "FLASHSALE_CONFIG")}
        env.update({
            "FLASHSALE_DATA_DIR": str(root / "data"),
            "FLASHSALE_INGEST_PORT": str(self.ingest_port),
            "FLASHSALE_NATS_PORT": str(free_port()),
            "FLASHSALE_NATS_MONITOR_PORT": str(free_port()),
            "FLASHSALE_PG_PORT": str(free_port()),
            "FLASHSALE_COMMITTER_METRICS_PORT": str(self.committer_port),
            "FLASHSALE_INGEST_METRICS_PORT": str(free_port()),
            "FLASHSALE_SHARDS": str(SHARDS),
            "FLASHSALE_PSP_URL": f"http://127.0.0.1:{psp_port}",
        })
        self.log = root / "dev.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flashsale", "dev", "--procfile", str(self.procfile), "--sale", ""],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.conf = root / "data" / "supervisor" / "supervisord.conf"
        self.base = f"http://127.0.0.1:{self.ingest_port}"

    def pid(self, program: str) -> int:
        """The running pid of a supervised program (0 while it is not running)."""
        out = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), "pid", program],
            capture_output=True, text=True, timeout=10,
        )
        return int(out.stdout.strip()) if out.stdout.strip().isdigit() else 0

    def pids(self) -> dict[str, int]:
        """Every supervised program and its pid (0 unless RUNNING: a program is STARTING for
        supervision.START_S after it was spawned, and supervisorctl shows no pid then)."""
        out = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), "status"],
            capture_output=True, text=True, timeout=10,
        )
        found = {}
        for line in out.stdout.splitlines():
            cols = line.split()
            pid = re.search(r"pid (\d+)", line)
            found[cols[0]] = int(pid[1]) if pid and cols[1] == "RUNNING" else 0
        return found

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _request(method: str, url: str, body: dict | None = None, headers: dict | None = None,
             timeout_s: float = 5.0) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except (urllib.error.URLError, OSError):
        return -1, {}


def _wait(what: str, ok, dev: Dev, timeout_s: float = 45.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        if dev.proc.poll() is not None:
            raise AssertionError(f"flashsale dev exited ({dev.proc.returncode}):\n{dev.log_tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s} s:\n{dev.log_tail()}")
        time.sleep(0.1)


class Buyer:
    """Purchases, one at a time, each with a new key; remembers every accepted id."""

    def __init__(self, dev: Dev) -> None:
        self.dev = dev
        self.accepted: dict[str, str] = {}  # purchase id -> the buyer's token
        # `flashsale dev` runs with config/dev.toml: its development secret signs the tokens.
        self.settings = load(env={}, file=CONFIG_DIR / "dev.toml")

    def buy(self) -> str | None:
        """The decided status of one new purchase, or None if it was not decided within 2 s."""
        key = uuid.uuid4().hex
        [token] = dev_tokens(self.settings, [f"u-{key[:12]}"])
        status, body = _request("POST", f"{self.dev.base}/v1/purchases", {"sku": SKU, "qty": 1},
                                {"Idempotency-Key": key, "Prefer": "wait=2",
                                 "Authorization": f"Bearer {token}"}, timeout_s=4)
        if status in (200, 202):
            self.accepted[body["id"]] = token
        return body["status"] if status == 200 and body.get("status") in FINAL else None

    def window_after(self, kill) -> float:
        """kill(), then purchases until one is decided: seconds from the kill to that decision."""
        killed_at = time.monotonic()
        kill()
        deadline = killed_at + 45
        while time.monotonic() < deadline:
            if self.buy() == "confirmed":
                return time.monotonic() - killed_at
            time.sleep(0.05)
        raise AssertionError(f"no purchase decided within 45 s of the kill:\n{self.dev.log_tail()}")

    def all_decided(self, timeout_s: float = 30.0) -> set[str]:
        """Ids of accepted purchases still not in a final state after `timeout_s`."""
        pending = set(self.accepted)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for pid in list(pending):
                status, body = _request("GET", f"{self.dev.base}/v1/purchases/{pid}?wait=1",
                                        headers={"Authorization": f"Bearer {self.accepted[pid]}"})
                if status == 200 and body.get("status") in FINAL:
                    pending.discard(pid)
        return pending


@pytest.fixture
def dev():
    # Not under pytest's tmp_path: any pytest run resets /tmp/pytest-of-<user> to mode 0700,
    # which locks out the unprivileged user postgres runs as when we are root.
    root = Path(tempfile.mkdtemp(prefix="flashsale-dev-"))
    d = Dev(root)
    yield d
    code = d.stop()
    print(f"--- flashsale dev (exit {code}) log tail ---\n{d.log_tail(30)}")
    shutil.rmtree(root, ignore_errors=True)


def test_every_killed_process_comes_back_and_purchases_resume(dev: Dev):
    started = time.monotonic()
    _wait("ingest ready", lambda: _request("GET", f"{dev.base}/readyz")[0] == 200, dev, 60)
    status, body = _request("PUT", f"{dev.base}/v1/admin/skus/{SKU}", {"stock": 100_000},
                            {"Authorization": "Bearer dev-admin-token-at-least-32-bytes"}, timeout_s=15)
    assert status == 200, body
    buyer = Buyer(dev)
    _wait("a first purchase decided", lambda: buyer.buy() == "confirmed", dev)
    print(f"flashsale dev serving after {time.monotonic() - started:.1f} s")

    committer = next(name for name, command in re.findall(r"^(\w+):\s*(.+)$", dev.procfile.read_text(), re.M)
                     if re.search(rf"-m committer --shard {shard_of(SKU, SHARDS)}\b", command))
    windows = {}
    for label, program in [("ingest", "app:ingest"), (committer, f"app:{committer}"),
                           ("gateway", "app:gateway"), ("nats-server", "nats"),
                           ("postmaster", "postgres")]:
        _wait("every program RUNNING", lambda: all(dev.pids().values()), dev)
        before = dev.pids()
        victim = before[program]
        windows[label] = buyer.window_after(lambda: os.kill(victim, signal.SIGKILL))  # noqa: B023
        _wait("every program RUNNING again", lambda: all(dev.pids().values()), dev)
        after = dev.pids()
        assert after[program] != victim, f"{program} was not restarted"
        also = sorted(p for p in before if p != program and after[p] != before[p])
        print(f"kill -9 {label} (pid {victim} -> {after[program]}): unavailable "
              f"{windows[label]:.2f} s; also restarted: {also or 'none'}")
        if program.startswith("app:"):
            assert not also  # one process's death is not an outage of the others

    undecided = buyer.all_decided()
    print(f"{len(buyer.accepted)} purchases accepted, {len(undecided)} not decided; "
          f"windows: {', '.join(f'{k} {v:.2f} s' for k, v in windows.items())}; "
          f"total {time.monotonic() - started:.1f} s")
    assert not undecided
    last = dev.pids()
    assert dev.stop() == 0  # SIGINT, as Ctrl-C of make run
    assert "flashsale: stopped" in dev.log_tail(5)
    assert not [p for p in last.values() if Path(f"/proc/{p}").exists()], "left running after stop"
