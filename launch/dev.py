"""`flashsale dev` (make run): everything on this machine under supervisord. The embedded NATS +
Postgres (unless NATS_URL / DATABASE_URL point elsewhere), then schema, streams and the
durability check, then the Procfile's processes and the demo sale. A program that dies is
restarted; Ctrl-C stops all, in dependency order; should supervisord die, everything it ran is
ended and this run exits non-zero."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import msgspec
import nats.errors

from committer.schema import SchemaBusy
from config.settings import Settings, load, to_env
from flashsale import shardmap
from flashsale.durability import verify
from flashsale.ports import port_open
from flashsale.supervision import (
    PRIORITY,
    RUNNING,
    AlreadyRunning,
    Program,
    Supervisor,
    app_programs,
    end_groups,
    hold_data_dir,
    write_conf,
)
from flashsale.urls import without_password
from launch.cluster import dev_node_ports, healthy
from launch.demo import load_demo
from launch.dev_checks import committer_warnings, ingest_readiness, ports_in_use
from launch.dev_servers import NATS_NODE_PREFIX, embedded_programs
from launch.operations import prepare
from launch.postgres_server import postgres_ready

RUN_WAIT_S = 60  # for the Procfile's processes to be RUNNING under supervisord
NATS_WAIT_S = 30  # for the embedded nats-server to listen
CLUSTER_WAIT_S = 60  # for every node of a local NATS cluster to say JetStream is healthy
POSTGRES_WAIT_S = 60  # for the embedded postgres to accept connections
WAIT_POLL_INTERVAL_S = 0.2
WATCH_S = 0.5  # how often `flashsale dev` looks at supervisord and its programs' pids
R_MAX = 3  # stream replicas of a local cluster: R3 at most, as NATS recommends


class DevError(RuntimeError):
    """`flashsale dev` cannot serve; the message says why."""


class _Stop(Exception):
    """SIGINT (Ctrl-C) or SIGTERM to `flashsale dev`: stop everything."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def _die_with_parent() -> None:
    """In the supervisord child: SIGTERM when `flashsale dev` dies, even by kill -9, so nothing
    is left serving (and holding the ports) without it."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def say(line: str) -> None:
    print(f"flashsale: {line}", flush=True)


@dataclass
class Run:
    """One `flashsale dev`: its settings, its programs, and supervisord once started."""

    settings: Settings
    servers: list[Program]  # the embedded servers it runs
    app: list[Program]  # the Procfile's processes
    supervisord: subprocess.Popen[bytes]
    supervisor: Supervisor
    groups: dict[str, int]  # program -> pid = pgid, as last seen

    def wait_until(self, ready: Callable[[], bool], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if self.supervisord.poll() is not None:
                raise DevError(f"supervisord exited with {self.supervisord.returncode} "
                               f"while waiting for {what}")
            if time.monotonic() > deadline:
                raise DevError(f"{what} not up after {timeout_s:g} s (see its log lines above)")
            time.sleep(WAIT_POLL_INTERVAL_S)

    def program_pids(self) -> dict[str, tuple[str, int]]:
        """supervisord's view of every program; remembers each running one's pid (its pgid)."""
        states = self.supervisor.states()
        for name, (_, pid) in states.items():
            if pid:
                self.groups[name] = pid
        return states


def dev_settings(args: argparse.Namespace, settings: Settings, data: Path) -> tuple[Settings, list[Program]]:
    """The settings every process gets, pointing at the embedded servers this run starts."""
    servers, overrides = embedded_programs(settings, data, args.nats_cluster)
    settings = msgspec.structs.replace(settings, **overrides)
    if any(p.name.startswith(NATS_NODE_PREFIX) for p in servers):
        # R-N streams: an ack means a quorum of nodes stored the intent, the durability a
        # cluster buys instead of an fsync per write on one node.
        settings = msgspec.structs.replace(settings, stream_replicas=min(args.nats_cluster, R_MAX),
                                           require_sync_always=False)
    return settings, servers


def process_env(settings: Settings) -> dict[str, str]:
    """The environment of supervisord and so of every program it runs."""
    env = {**os.environ, **to_env(settings)}
    env.pop("FLASHSALE_DATABASE_ADMIN_URL", None)  # the superuser is for schema changes only
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cmd_dev(args: argparse.Namespace) -> int:
    settings = load()
    data = Path(settings.data_dir).resolve()
    try:
        lock = hold_data_dir(data)
    except AlreadyRunning as e:
        print(f"flashsale: refusing to start: {e}", file=sys.stderr, flush=True)
        return 2
    settings, servers = dev_settings(args, settings, data)
    procfile = Path(args.procfile)
    app = app_programs(procfile, settings)
    busy = ports_in_use(settings, servers, app)
    if busy:
        print(f"flashsale: refusing to start: in use already: {', '.join(busy)}. An earlier run may "
              "still be stopping, or another program holds them (choose other ports with "
              "FLASHSALE_*_PORT and the Procfile)", file=sys.stderr, flush=True)
        return 2
    for line in committer_warnings(settings, procfile, app):
        say(line)
    conf = write_conf(data / "supervisor", servers, app)
    # Its own session: Ctrl-C reaches supervisord only through us, as one orderly stop. It
    # inherits the data directory's lock, which both hold: it stays held while either is up.
    supervisord = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)], env=process_env(settings),
        start_new_session=True, preexec_fn=_die_with_parent, pass_fds=(lock.fileno(),),
    )
    run = Run(settings, servers, app, supervisord, Supervisor(conf.parent), {})
    try:
        return _supervise(run, Path(args.sale) if args.sale else None)
    finally:
        lock.close()


def _supervise(run: Run, sale: Path | None) -> int:
    """Until Ctrl-C, SIGTERM or supervisord's death; then everything it ran is stopped."""
    # Stop order: ingest first, the embedded servers last (flashsale.supervision.PRIORITY).
    programs = sorted(run.servers + run.app, key=lambda p: -PRIORITY[p.runs_as])
    # Both set explicitly: a shell without job control starts background commands with SIGINT
    # ignored, and Python then never turns it into KeyboardInterrupt.
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        if _serve(run):
            readiness = ingest_readiness(run.settings, run.app)
            threading.Thread(target=load_demo, args=(run.settings, sale, readiness), daemon=True).start()
        return _watch(run)
    except DevError as e:
        print(f"flashsale: {e}", file=sys.stderr, flush=True)
        return 2
    except _Stop:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        if run.supervisord.poll() is None:
            run.supervisord.terminate()  # supervisord stops every program in PRIORITY order, then exits
        run.supervisord.wait()
        # Whatever outlived it (a dead supervisord's children, a Procfile shell's children).
        left = end_groups({p.name: run.groups[p.name] for p in programs if p.name in run.groups})
        say(f"stopped{f' (killed: {left})' if left else ''}")


def _watch(run: Run) -> int:
    """Until supervisord exits: should it die (kill -9, a crash), nothing may keep serving
    unwatched. Its programs got SIGTERM as it died (flashsale.supervision.dies_with_supervisor);
    the caller ends what is left of their process groups, and this run exits non-zero."""
    while run.supervisord.poll() is None:
        try:
            run.program_pids()
        except OSError:
            pass  # going down: the exit is what counts
        time.sleep(WATCH_S)
    code = run.supervisord.returncode
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
    print(f"flashsale: supervisord {how}: stopping every process it ran; start again with "
          "make run", file=sys.stderr, flush=True)
    return 1


def _serve(run: Run) -> bool:
    """The servers up and proven, schema and streams in place, the Procfile's processes started;
    False if they are not all running (supervisord keeps trying: not ready)."""
    _wait_servers(run)
    _check_durability(run)
    if "postgres" in {p.name for p in run.servers}:
        run.wait_until(lambda: postgres_ready(run.settings.pg_port), "PostgreSQL", POSTGRES_WAIT_S)
        say(f"PostgreSQL 16 at {without_password(run.settings.database_url)}")
    try:
        asyncio.run(prepare(run.settings))
    except shardmap.ShardMapError as e:
        raise DevError(f"refusing to serve: {e}") from e
    except (OSError, asyncpg.PostgresError, nats.errors.Error, SchemaBusy) as e:
        raise DevError(f"schema and streams not prepared: {e!r}") from e
    return _start_programs(run)


def _wait_servers(run: Run) -> None:
    s = run.settings
    embedded = {p.name for p in run.servers}
    nodes = dev_node_ports(len([n for n in embedded if n.startswith(NATS_NODE_PREFIX)]),
                           s.nats_port, s.nats_monitor_port)
    if "nats" in embedded:
        run.wait_until(lambda: port_open(s.nats_port), "nats-server", NATS_WAIT_S)
        say(f"nats-server (JetStream) at {without_password(s.nats_url)}")
    if nodes:
        run.wait_until(lambda: all(healthy(n.monitor) for n in nodes), "the NATS cluster", CLUSTER_WAIT_S)
        say(f"NATS cluster of {len(nodes)} nodes, streams R{s.stream_replicas}, "
            f"at {without_password(s.nats_url)}")


def _check_durability(run: Run) -> None:
    found = verify(run.settings.nats_monitor_url)
    say(f"JetStream durability: {found.message}")
    # Our own server must prove it; an external one without a monitor URL cannot be asked.
    ours = "nats" in {p.name for p in run.servers}
    if run.settings.require_sync_always and (
        found.verdict == "interval" or (ours and found.verdict != "sync_always")
    ):
        raise DevError(f"refusing to serve: {found.message}. config/nats.conf sets sync_interval: "
                       "always; set FLASHSALE_REQUIRE_SYNC_ALWAYS=false to accept a weaker mode")


def _start_programs(run: Run) -> bool:
    names = [p.name for p in sorted(run.app, key=lambda p: PRIORITY[p.runs_as])]  # dependencies first

    def start() -> bool:
        try:
            run.supervisor.start(names)
        except OSError:  # its socket is not there yet
            return False
        return True

    run.wait_until(start, "supervisord", RUN_WAIT_S)
    ctl = f"{Path(sys.executable).parent}/supervisorctl -c {Path(run.settings.data_dir).resolve()}" \
          "/supervisor/supervisord.conf status"

    def not_running() -> list[str]:
        try:
            states = run.program_pids()
        except OSError as e:
            return [f"supervisord: {e}"]
        return [f"{n} ({states[n][0]})" for n in names if states.get(n, ("?", 0))[0] != RUNNING]

    try:
        run.wait_until(lambda: not not_running(), "the Procfile's processes", RUN_WAIT_S)
    except DevError:
        # supervisord keeps restarting them with backoff; say which, keep supervising, no "ready".
        say(f"not running after {RUN_WAIT_S} s: {', '.join(not_running())}; see their "
            f"log lines above and {ctl}. Not ready.")
        return False
    say(f"running: {', '.join(names)}; status and restarts: {ctl}")
    return True
