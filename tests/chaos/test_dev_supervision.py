"""`flashsale dev` (make run) as a real process.

- kill -9 of ingest (one of the two sharing the port), of the SKU's committer, of nats-server
  and of the postmaster, one after the other: each comes back under supervisord while the
  others keep running, and purchases are
  decided again; every accepted purchase is decided in the end. The unavailability window of
  each kill (kill -> next purchase decided) is printed.
- The supervisor is supervised: a second run on the same data directory (or on the same ports)
  refuses while the first runs; kill -9 of supervisord stops every process it ran.
- A stop (Ctrl-C) during paid purchases loses no payment: every valid card ends confirmed, after
  a restart for those the stop caught before their charge."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from config.settings import CONFIG_DIR, REPO_ROOT, load
from flashsale.ports import free_port, free_port_block, port_open
from ingest.auth import dev_tokens
from proto.sharding import shard_of

pytestmark = pytest.mark.chaos

SKU = "chaos-sku"
SHARDS = 2
# `flashsale dev` runs with config/dev.toml: its admin token.
DEV_ADMIN_TOKEN = load(env={}, file=CONFIG_DIR / "dev.toml").admin_token
FINAL = {"confirmed", "rejected", "released", "cancelled", "expired"}


_runs = itertools.count(1)


class Dev:
    """A `flashsale dev` process on free ports with its data in a temp dir."""

    def __init__(self, root: Path, like: Dev | None = None, data: Path | None = None,
                 extra_env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                 extra_procfile: str = "") -> None:
        """`like`: a second run with the same Procfile and ports (and data directory unless
        `data` names another)."""
        self.root = root
        self.run = next(_runs)
        self.args = args if like is None else like.args
        if like is not None:
            self.ingest_port, self.committer_port = like.ingest_port, like.committer_port
            self.procfile = like.procfile
            self.env = {**like.env, "FLASHSALE_DATA_DIR": str(data or root / "data")}
            self._launch(data or root / "data")
            return
        self.ingest_port = free_port()
        self.committer_port = free_port_block(SHARDS)
        psp_port = free_port()
        # The repository's Procfile, with the fixed ports of gateway and fake PSP made free ones.
        procfile = (REPO_ROOT / "Procfile").read_text()
        procfile = re.sub(r"--metrics-port \d+", f"--metrics-port {free_port()}", procfile)
        procfile = re.sub(r"--port \d+", f"--port {psp_port}", procfile)
        procfile = procfile.replace("data/fakepsp-ledger.json", str(root / "fakepsp-ledger.json"))
        self.procfile = root / "Procfile"
        self.procfile.write_text(procfile + extra_procfile)
        env = {k: v for k, v in os.environ.items()
               if k not in ("NATS_URL", "DATABASE_URL", "PSP_URL", "FLASHSALE_CONFIG")}
        env.update({
            "FLASHSALE_DATA_DIR": str(root / "data"),
            "FLASHSALE_INGEST_PORT": str(self.ingest_port),
            "FLASHSALE_NATS_PORT": str(free_port()),
            "FLASHSALE_NATS_MONITOR_PORT": str(free_port()),
            "FLASHSALE_PG_PORT": str(free_port()),
            "FLASHSALE_COMMITTER_METRICS_PORT": str(self.committer_port),
            # Two ingest processes on the one port (ingest, ingest-2), each with its /metrics.
            "FLASHSALE_INGEST_PROCESSES": "2",
            "FLASHSALE_INGEST_METRICS_PORT": str(free_port_block(2)),
            "FLASHSALE_SHARDS": str(SHARDS),
            "FLASHSALE_PSP_URL": f"http://127.0.0.1:{psp_port}",
            **(extra_env or {}),
        })
        self.env = env
        self._launch(root / "data")

    def _launch(self, data: Path) -> None:
        self.log = self.root / f"dev{self.run}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "launch", "dev", "--procfile", str(self.procfile), "--sale", "",
                 *self.args],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.conf = data / "supervisor" / "supervisord.conf"
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
                            {"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"}, timeout_s=15)
    assert status == 200, body
    buyer = Buyer(dev)
    _wait("a first purchase decided", lambda: buyer.buy() == "confirmed", dev)
    print(f"flashsale dev serving after {time.monotonic() - started:.1f} s")

    committer = next(name for name, command in re.findall(r"^(\w+):\s*(.+)$", dev.procfile.read_text(), re.M)
                     if re.search(rf"-m committer --shard {shard_of(SKU, SHARDS)}\b", command))
    windows = {}
    for label, program in [("ingest", "ingest"), (committer, committer),
                           ("gateway", "gateway"), ("nats-server", "nats"),
                           ("postmaster", "postgres")]:
        _wait("every program RUNNING", lambda: all(dev.pids().values()), dev)
        before = dev.pids()
        assert "ingest-2" in before  # FLASHSALE_INGEST_PROCESSES=2: a second one on the port
        victim = before[program]
        windows[label] = buyer.window_after(lambda: os.kill(victim, signal.SIGKILL))  # noqa: B023
        _wait("every program RUNNING again", lambda: all(dev.pids().values()), dev)
        after = dev.pids()
        assert after[program] != victim, f"{program} was not restarted"
        also = sorted(p for p in before if p != program and after[p] != before[p])
        print(f"kill -9 {label} (pid {victim} -> {after[program]}): unavailable "
              f"{windows[label]:.2f} s; also restarted: {also or 'none'}")
        if program not in ("nats", "postgres"):
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


def _ready(dev: Dev) -> dict[str, int]:
    """Waits for `flashsale dev` to say ready; every Procfile program must be RUNNING by then."""
    _wait("flashsale dev ready", lambda: "flashsale: ready" in dev.log.read_text(errors="replace"), dev, 120)
    pids = dev.pids()
    assert pids and all(pids.values()), f"ready while not every program runs: {pids}"
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_one_run_per_data_dir_and_no_orphans_when_supervisord_dies():
    """Also: a standby line for a shard is reported as one, and the start does not wait on
    which of the two holds the lease."""
    root = Path(tempfile.mkdtemp(prefix="flashsale-dev-"))
    standby = f"committer0-standby: python -m committer --shard 0 --status-port {free_port()}\n"
    dev = Dev(root, extra_procfile=standby)
    try:
        _no_orphans(dev)
    finally:
        code = dev.stop()
        print(f"--- flashsale dev (exit {code}) log tail ---\n{dev.log_tail(15)}")
        shutil.rmtree(root, ignore_errors=True)


def _no_orphans(dev: Dev) -> None:
    pids = _ready(dev)
    log = dev.log.read_text()
    assert "committer0-standby" in pids and "warning" not in log
    assert "shard 0: committer0, committer0-standby (whichever holds the lease writes" in log
    # A second run on the same data directory refuses, and so does one on the same ports.
    for data, why in ((None, "another `flashsale dev`"), (dev.root / "other", "in use already")):
        second = Dev(dev.root, like=dev, data=data)
        assert second.proc.wait(60) == 2, second.log_tail()
        print(f"second run: {second.log_tail(3)}")
        assert "refusing to start" in second.log_tail(3) and why in second.log_tail(3)
    assert all(_alive(p) for p in pids.values())  # the first run did not notice

    supervisord = int((dev.conf.parent / "supervisord.pid").read_text())
    os.kill(supervisord, signal.SIGKILL)
    assert dev.proc.wait(90) == 1, dev.log_tail()
    assert "supervisord was killed by SIGKILL" in dev.log.read_text()
    left = {name: pid for name, pid in pids.items() if _alive(pid)}
    assert not left, f"left serving without a supervisor: {left}"
    assert not port_open(dev.ingest_port)
    # And the data directory is free for the next run.
    again = Dev(dev.root, like=dev)
    try:
        _ready(again)
    finally:
        again.stop()


PAID = "paid-sku"
STOP_ORDER = ["ingest", "gateway", "committer", "fakepsp", "(nats|postgres)"]


def test_a_stop_during_paid_purchases_loses_no_payment(tmp_path_factory):
    """Ctrl-C while ~30 tok_visa purchases a second flow in, with a slow PSP (every call 1.5 s) and
    a gateway drain of 1 s, so the stop catches payments at every step: every purchase ends
    confirmed, those the stop caught unsettled once the next run finishes them. Also: the sale
    file is loaded on the first start only (stock an operator changed survives the restart)."""
    root = Path(tempfile.mkdtemp(prefix="flashsale-dev-"))
    sale = root / "sale.toml"
    sale.write_text('[[sku]]\nsku = "demo-a"\nstock = 10\n')
    dev = Dev(root, extra_env={"FAKEPSP_LATENCY_MS": "1500", "FLASHSALE_GATEWAY_DRAIN_S": "1"},
              args=("--sale", str(sale)))
    again: Dev | None = None
    try:
        _ready(dev)
        assert _request("GET", f"{dev.base}/v1/skus/demo-a")[1]["stock"] == 10
        status, body = _request("PUT", f"{dev.base}/v1/admin/skus/demo-a", {"stock": 7},
                                {"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"}, timeout_s=15)
        assert status == 200, body
        status, body = _request("PUT", f"{dev.base}/v1/admin/skus/{PAID}",
                                {"stock": 100_000, "price_cents": 500, "payment": "required",
                                 "reservation_ttl_s": 120},
                                {"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"}, timeout_s=15)
        assert status == 200, body
        settings = load(env={}, file=CONFIG_DIR / "dev.toml")
        accepted: dict[str, str] = {}
        stopping = threading.Event()

        def buyer() -> None:
            while not stopping.is_set():
                key = uuid.uuid4().hex
                [token] = dev_tokens(settings, [f"u-{key[:12]}"])
                code, answer = _request("POST", f"{dev.base}/v1/purchases",
                                        {"sku": PAID, "qty": 1, "payment_token": "tok_visa"},
                                        {"Idempotency-Key": key, "Authorization": f"Bearer {token}"})
                if code in (200, 202):
                    accepted[answer["id"]] = token
                time.sleep(0.1)

        buyers = [threading.Thread(target=buyer) for _ in range(3)]
        for b in buyers:
            b.start()
        try:
            _wait("purchases flowing", lambda: len(accepted) >= 60, dev, 60)
            assert dev.stop() == 0, dev.log_tail()  # SIGINT, as Ctrl-C of make run
        finally:
            stopping.set()
            for b in buyers:
                b.join()
        log = dev.log.read_text(errors="replace")
        stopped = [m[1] for m in re.finditer(r" stopped: (\S+) \(", log)]
        ranks = [next(i for i, r in enumerate(STOP_ORDER) if re.fullmatch(rf"{r}\d*(-\d+)?", name))
                 for name in stopped]
        print(f"{len(accepted)} purchases accepted; stop order: {stopped}")
        assert len(stopped) == 8, log[-3000:]  # ingest, ingest-2, gateway, 2 committers, fakepsp, 2 servers
        assert ranks == sorted(ranks), f"stopped out of dependency order: {stopped}"
        handed_back = log.count("handed back unsettled")

        again = Dev(root, like=dev)
        _ready(again)
        assert "demo-a exist already, left as they are" in again.log.read_text()
        assert _request("GET", f"{again.base}/v1/skus/demo-a")[1]["stock"] == 7
        final: dict[str, str] = {}
        deadline = time.monotonic() + 90
        while len(final) < len(accepted) and time.monotonic() < deadline:
            for pid, token in accepted.items():
                if pid not in final:
                    code, answer = _request("GET", f"{again.base}/v1/purchases/{pid}?wait=1",
                                            headers={"Authorization": f"Bearer {token}"})
                    if code == 200 and answer.get("status") in FINAL:
                        reason = f":{answer['reason']}" if answer.get("reason") else ""
                        final[pid] = answer["status"] + reason
        outcomes = {o: list(final.values()).count(o) for o in set(final.values())}
        print(f"after the restart: {outcomes}; jobs handed back unsettled at the stop: {handed_back}")
        assert len(final) == len(accepted), f"{len(accepted) - len(final)} purchases not decided"
        assert outcomes == {"confirmed": len(accepted)}, outcomes
    finally:
        for d in (again, dev):
            if d is not None:
                code = d.stop()
                print(f"--- flashsale dev run {d.run} (exit {code}) log tail ---\n{d.log_tail(15)}")
        shutil.rmtree(root, ignore_errors=True)


def test_dev_runs_a_three_node_nats_cluster_with_r3_streams():
    """`flashsale dev --nats-cluster 3`: three supervised nodes, R3 streams, purchases decided,
    and still decided with one node killed."""
    root = Path(tempfile.mkdtemp(prefix="flashsale-dev-"))
    dev = Dev(root, args=("--nats-cluster", "3"),
              extra_env={"FLASHSALE_NATS_PORT": str(free_port_block(6)),
                         "FLASHSALE_NATS_MONITOR_PORT": str(free_port_block(3))})
    try:
        pids = _ready(dev)
        assert {"nats-n1", "nats-n2", "nats-n3"} <= set(pids) and "nats" not in pids
        assert "streams R3" in dev.log.read_text()
        monitor = int(dev.env["FLASHSALE_NATS_MONITOR_PORT"])
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/jsz?streams=true", timeout=5) as r:
            streams = [s for a in json.loads(r.read())["account_details"] for s in a["stream_detail"]]
        replicas = {s["name"]: len(s["cluster"].get("replicas") or []) + 1 for s in streams}
        print(f"streams and their copies: {replicas}")
        assert replicas and all(n == 3 for n in replicas.values()), replicas
        status, body = _request("PUT", f"{dev.base}/v1/admin/skus/{SKU}", {"stock": 1000},
                                {"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"}, timeout_s=15)
        assert status == 200, body
        buyer = Buyer(dev)
        _wait("a purchase decided", lambda: buyer.buy() == "confirmed", dev)
        os.kill(pids["nats-n2"], signal.SIGKILL)
        print(f"kill -9 nats-n2: next purchase decided after {buyer.window_after(lambda: None):.2f} s")
        assert not buyer.all_decided()
    finally:
        code = dev.stop()
        print(f"--- flashsale dev (exit {code}) log tail ---\n{dev.log_tail(15)}")
        shutil.rmtree(root, ignore_errors=True)
    assert code == 0
