"""The embedded servers do what a 202 promises (docs/operations.md, "Durability choices"):
nats-server fsyncs every acknowledged write (seen in its effective configuration, in its system
calls, and across a kill -9), `flashsale dev` refuses to serve a server that does not, and
PostgreSQL starts again after its postmaster was killed with -9."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import nats
import pytest
from nats.js.errors import NotFoundError

from config.settings import CONFIG_DIR, Settings, load
from flashsale.durability import DurabilityError, check_durability, read_jetstream_config, verify
from flashsale.jetstream import ensure_streams
from flashsale.ports import free_port, wait_for_port
from flashsale.urls import monitor_url, nats_url
from launch.embedded import Embedded
from launch.nats_server import nats_server_binary, start_nats
from launch.postgres_server import start_postgres


def _lax_nats(data_dir: Path) -> Embedded:
    """A server whose file says fsync and does not: config/nats.conf's settings followed by a
    second jetstream block, which replaces the first (no fsync, no limits)."""
    data_dir.mkdir(parents=True)
    port, mon = free_port(), free_port()
    template = (CONFIG_DIR / "nats.conf").read_text()
    conf = data_dir / "nats.conf"
    conf.write_text(
        template.replace("${port}", str(port)).replace("${monitor_port}", str(mon))
        .replace("${store_dir}", str(data_dir / "js"))
        + f'\njetstream {{ store_dir: "{data_dir / "js"}" }}\n'
    )
    with open(data_dir / "nats.log", "ab") as log:
        proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, 20, proc)
    return Embedded("nats", proc, nats_url(port), port, data_dir / "nats.log", monitor_url(mon))


@pytest.fixture
def embedded_nats(tmp_path: Path):
    server = start_nats(tmp_path / "nats")
    yield server
    server.stop()


@pytest.fixture
def lax_nats(tmp_path: Path):
    server = _lax_nats(tmp_path / "lax")
    yield server
    server.stop()


def _settings(server: Embedded, namespace: str = "dur", **overrides: object) -> Settings:
    values = {"nats_url": server.url, "nats_monitor_url": server.monitor_url, "namespace": namespace}
    return load(env={}, file=None, **{**values, **overrides})


def test_effective_config_of_the_embedded_server_has_sync_always_and_the_limits(embedded_nats):
    config = read_jetstream_config(embedded_nats.monitor_url)
    print(f"effective jetstream config: {config}")
    assert config.sync_always is True
    assert config.max_storage_bytes == 8 << 30  # max_file_store: 8GB in config/nats.conf
    assert config.max_memory_bytes == 256 << 20  # max_memory_store: 256MB
    assert config.store_dir.startswith(str(Path(embedded_nats.log_path).parent / "jetstream"))
    assert check_durability(_settings(embedded_nats)).startswith("sync_always in effect")


def test_the_check_tells_a_server_that_does_not_fsync(lax_nats):
    found = verify(lax_nats.monitor_url)
    print(f"lax server: {found.message}")
    assert found.verdict == "interval"
    assert found.configs[0].sync_always is False
    with pytest.raises(DurabilityError, match="sync_always NOT in effect"):
        check_durability(_settings(lax_nats))
    assert "NOT in effect" in check_durability(_settings(lax_nats, require_sync_always=False))
    assert check_durability(_settings(lax_nats, nats_monitor_url="")) == "not verified (no monitor URL)"


def test_dev_refuses_to_serve_without_sync_always(lax_nats, tmp_path):
    """External NATS that does not fsync, named with its monitor URL: `flashsale dev` exits
    non-zero before starting any process of the Procfile."""
    env = {**os.environ, "NATS_URL": lax_nats.url, "FLASHSALE_NATS_MONITOR_URL": lax_nats.monitor_url,
           "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/unused",
           "FLASHSALE_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-m", "launch", "dev", "--sale", ""], env=env,
                         capture_output=True, text=True, timeout=60)
    print(out.stdout[-2000:], out.stderr[-2000:])
    assert out.returncode == 2
    assert "refusing to serve: sync_always NOT in effect" in out.stderr
    assert "spawned: 'ingest'" not in out.stdout


def _fsync_calls(strace_summary: str) -> int:
    """Calls of fsync/fdatasync in `strace -c` output (calls is the 4th column)."""
    calls = 0
    for line in strace_summary.splitlines():
        cols = line.split()
        if cols and cols[-1] in ("fsync", "fdatasync"):
            calls += int(cols[3])
    return calls


async def _publish(server: Embedded, count: int, namespace: str) -> float:
    """`count` purchase intents, one at a time (each waits for its ack); seconds taken."""
    settings = _settings(server, namespace)
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings)
        started = time.perf_counter()
        for i in range(count):
            await js.publish(settings.names.intent(0, "purchase", f"p{i}"), b"{}")
        return time.perf_counter() - started
    finally:
        await nc.close()


def _count_fsyncs(server: Embedded, count: int, tmp_path: Path, namespace: str) -> tuple[int, float]:
    out, err = tmp_path / f"strace-{namespace}.txt", tmp_path / f"strace-{namespace}.err"
    with open(err, "wb") as err_file:
        tracer = subprocess.Popen(
            ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out), "-p", str(server.proc.pid)],
            stderr=err_file,
        )
    try:
        deadline = time.monotonic() + 10
        while "attached" not in err.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "attached" in err.read_text(), err.read_text()
        elapsed_s = asyncio.run(_publish(server, count, namespace))
    finally:
        tracer.send_signal(signal.SIGINT)  # detach and write the summary
        tracer.wait(10)
    return _fsync_calls(out.read_text()), elapsed_s


def test_each_acknowledged_publish_is_fsynced(embedded_nats, lax_nats, tmp_path):
    """strace counts the server's fsync calls while it acknowledges N publishes: at least one per
    publish with the embedded configuration; the lax server makes none."""
    n = 200
    fsyncs, elapsed_s = _count_fsyncs(embedded_nats, n, tmp_path, "sync")
    lax_fsyncs, lax_elapsed_s = _count_fsyncs(lax_nats, n, tmp_path, "lax")
    print(f"{n} acked publishes: embedded {fsyncs} fsyncs in {elapsed_s:.2f} s "
          f"({n / elapsed_s:.0f}/s); lax {lax_fsyncs} fsyncs in {lax_elapsed_s:.2f} s "
          f"({n / lax_elapsed_s:.0f}/s) (both under strace)")
    assert fsyncs >= n
    assert lax_fsyncs < n


async def _publish_until_killed(server: Embedded, kill_after: int, namespace: str,
                                in_flight: int = 64) -> tuple[list[str], int]:
    """A flood of intents, `in_flight` unacknowledged at any time, and kill -9 of the server as
    soon as `kill_after` acks came back. The ids whose ack arrived, in arrival order, and how
    many publishes were sent in all."""
    settings = _settings(server, namespace)
    nc = await nats.connect(server.url, max_reconnect_attempts=0)
    js = nc.jetstream()
    await ensure_streams(js, settings)
    acked: list[str] = []
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while server.proc.poll() is None and sent < 50 * kill_after:
            key = f"k{sent}"
            sent += 1
            try:
                await js.publish(settings.names.intent(0, "purchase", key), key.encode(), timeout=5)
            except (Exception, asyncio.CancelledError):
                return  # in flight when the server died: no ack, no promise
            acked.append(key)
            if len(acked) == kill_after:
                os.kill(server.proc.pid, signal.SIGKILL)
                server.proc.wait()

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    try:
        await nc.close()
    except Exception:
        pass
    return list(acked), sent


async def _stored(server: Embedded, namespace: str, keys: list[str]) -> list[str]:
    settings = _settings(server, namespace)
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        found = []
        for key in keys:
            try:
                msg = await js.get_last_msg(settings.names.intents_stream(0),
                                            settings.names.intent(0, "purchase", key))
            except NotFoundError:
                continue
            if msg.data == key.encode():
                found.append(key)
        return found
    finally:
        await nc.close()


def test_every_acked_intent_survives_kill_9_of_nats_server(tmp_path):
    server = start_nats(tmp_path / "crash")
    acked, sent = asyncio.run(_publish_until_killed(server, kill_after=1000, namespace="crash"))
    assert server.proc.returncode == -signal.SIGKILL
    restarted = start_nats(tmp_path / "crash", port=server.port)
    try:
        stored = asyncio.run(_stored(restarted, "crash", acked))
    finally:
        restarted.stop()
    print(f"{sent} intents sent, {len(acked)} acked before kill -9 landed; "
          f"{len(stored)} of those found after restart")
    assert len(acked) >= 1000
    assert stored == acked


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return None


async def _write_and_freeze_a_backend(url: str) -> int:
    """Rows committed, then the pid of a backend left connected (its client socket stays open
    until this test's process exits: asyncio.run closes the loop without closing it)."""
    conn = await asyncpg.connect(url.rpartition("/")[0] + "/postgres")
    await conn.execute("CREATE TABLE kept (id int PRIMARY KEY)")
    await conn.execute("INSERT INTO kept VALUES (1), (2), (3)")
    _left_open.append(conn)
    pid: int = await conn.fetchval("SELECT pg_backend_pid()")
    return pid


_left_open: list[asyncpg.Connection] = []


async def _kept(url: str) -> list[int]:
    conn = await asyncpg.connect(url.rpartition("/")[0] + "/postgres")
    try:
        return [r["id"] for r in await conn.fetch("SELECT id FROM kept ORDER BY id")]
    finally:
        await conn.close()


@pytest.fixture
def pg_root():
    """Not under pytest's tmp_path: any pytest run resets /tmp/pytest-of-<user> to mode 0700,
    which locks out the unprivileged user postgres runs as when we are root."""
    root = Path(tempfile.mkdtemp(prefix="flashsale-pg-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_postgres_starts_again_after_kill_9_of_its_postmaster(pg_root):
    """The killed postmaster is our child (a zombie until reaped) and a frozen backend outlives
    it holding the shared memory: the next start clears both and finds the committed rows."""
    pg = start_postgres(pg_root / "pg")
    backend = asyncio.run(_write_and_freeze_a_backend(pg.url))
    os.kill(backend, signal.SIGSTOP)  # an orphan that cannot notice its postmaster died
    os.kill(pg.proc.pid, signal.SIGKILL)
    time.sleep(0.2)
    assert _state(pg.proc.pid) == "Z"
    started = time.monotonic()
    again = start_postgres(pg_root / "pg", port=pg.port)
    try:
        print(f"restart after kill -9 took {time.monotonic() - started:.2f} s")
        assert _state(pg.proc.pid) is None  # reaped
        assert _state(backend) in (None, "Z")  # the frozen orphan was killed
        assert asyncio.run(_kept(again.url)) == [1, 2, 3]
    finally:
        again.stop()
