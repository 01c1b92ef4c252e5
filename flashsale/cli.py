"""`flashsale` command line: run the dev system, apply the schema, load sales, reconcile."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
import nats.errors

from committer.schema import SchemaBusy, apply_schema
from config.settings import CONFIG_DIR, REPO_ROOT, Settings, SettingsError, load, to_env
from flashsale import shardmap, sku_changes
from flashsale.cluster import dev_node_ports, healthy, run_node
from flashsale.db import ensure_database, user_of
from flashsale.durability import verify
from flashsale.embedded import (
    PG_SERVICE_ROLE,
    SERVICE_PASSWORD_FILE,
    monitor_url,
    nats_url,
    password,
    port_open,
    postgres_ready,
    postgres_url,
    run_nats,
    run_postgres,
    wait_http_ok,
    without_password,
)
from flashsale.jetstream import connect_nats_for_command, ensure_streams
from flashsale.retention import purge_intents
from flashsale.supervision import (
    PRIORITY,
    RUNNING,
    AlreadyRunning,
    Program,
    Supervisor,
    app_programs,
    committer_shards,
    end_groups,
    hold_data_dir,
    write_conf,
)
from flashsale.verify import verify_draw
from ingest.auth import DEV_TOKEN_TTL_S, ConfigError, dev_tokens
from proto.messages import Refusal, SkuState

DEMO_SALE = CONFIG_DIR / "sales" / "demo.toml"
NATS_NODE_PREFIX = "nats-n"  # the programs of `dev --nats-cluster N`: nats-n1, nats-n2, ...
RUN_WAIT_S = 60  # for the Procfile's processes to be RUNNING under supervisord, and ingest ready
DEMO_LOAD_WAIT_S = 30.0  # for the shards' writers (whichever holds each lease) to apply the demo sale
WATCH_S = 0.5  # how often `flashsale dev` looks at supervisord and its programs' pids


async def prepare(settings: Settings) -> None:
    """Schema and streams: idempotent, safe to run at every start."""
    admin_url = settings.schema_database_url
    await ensure_database(admin_url)
    # The services' role, if they connect as another one than schema changes do: it gets the tables.
    service_role = user_of(settings.database_url)
    await apply_schema(admin_url, settings.shards,
                       service_role if service_role != user_of(admin_url) else None)
    nc = await connect_nats_for_command(settings, "flashsale-prepare")
    try:
        await ensure_streams(nc.jetstream(), settings)
    finally:
        await nc.close()


def _wait_until(ready: Callable[[], bool], what: str, timeout_s: float,
                supervisord: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if supervisord.poll() is not None:
            raise DevError(f"supervisord exited with {supervisord.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise DevError(f"{what} not up after {timeout_s:g} s (see its log lines above)")
        time.sleep(0.2)


def _wait_ready(urls: list[str], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    return all(wait_http_ok(url, deadline - time.monotonic()) == "ok" for url in urls)


def _ports_in_use(settings: Settings, servers: list[Program], app: list[Program]) -> list[str]:
    """The ports this run will listen on that something already answers on (an earlier run that
    is still stopping, or another program): 'port (what)' for each."""
    wanted = {settings.ingest_port: "ingest_port"}
    for name in ("ingest_metrics_port", "gateway_metrics_port"):
        if getattr(settings, name):
            wanted[getattr(settings, name)] = name
    if settings.committer_metrics_port:
        for shard in range(settings.shards):
            wanted[settings.committer_metrics_port + shard] = f"committer_metrics_port + {shard}"
    names = {p.name for p in servers}
    if "nats" in names:
        wanted |= {settings.nats_port: "nats_port", settings.nats_monitor_port: "nats_monitor_port"}
    nodes = [n for n in names if n.startswith(NATS_NODE_PREFIX)]
    for i, node in enumerate(dev_node_ports(len(nodes), settings.nats_port, settings.nats_monitor_port)):
        wanted |= {node.client: f"nats node {i + 1} client", node.route: f"nats node {i + 1} route",
                   node.monitor: f"nats node {i + 1} monitor"}
    if "postgres" in names:
        wanted[settings.pg_port] = "pg_port"
    for p in app:
        wanted |= {port: f"Procfile {p.name}" for port in p.ports}
    return [f"{port} ({what})" for port, what in sorted(wanted.items()) if port_open(port)]


def _check_committers(settings: Settings, procfile: Path, app: list[Program]) -> None:
    """One committer line per shard writes; more lines for a shard are its standbys."""
    shards = committer_shards(app)
    missing = [s for s in range(settings.shards) if s not in shards]
    extra = sorted(s for s in shards if s >= settings.shards)
    if missing or extra:
        print(f"flashsale: warning: {procfile} has no committer for shard(s) {missing or 'none'}"
              f" and committers for shard(s) {extra or 'none'} outside the {settings.shards}"
              " shards (FLASHSALE_SHARDS)", flush=True)
    for shard, names in sorted(shards.items()):
        if len(names) > 1:
            print(f"flashsale: shard {shard}: {', '.join(names)} (whichever holds the lease "
                  f"writes, the other{'s' if len(names) > 2 else ''} stand by)", flush=True)
    own_port = {p.name for p in app if "--status-port" in p.command}
    for shard, names in shards.items():
        shared = [n for n in names if n not in own_port]
        if settings.committer_metrics_port and len(shared) > 1:
            print(f"flashsale: warning: {', '.join(shared)} would share shard {shard}'s status "
                  "port: give standbys their own --status-port", flush=True)


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


def _embedded_urls(settings: Settings, data: Path) -> dict[str, str]:
    """The settings that point a process at the embedded servers under `data` (those that
    NATS_URL / DATABASE_URL do not replace), with their generated credentials."""
    overrides = {}
    if "NATS_URL" not in os.environ:
        overrides["nats_url"] = nats_url(settings.nats_port, password(data / "nats"))
        overrides["nats_monitor_url"] = monitor_url(settings.nats_monitor_port)
    if "DATABASE_URL" not in os.environ:
        pg = data / "postgres"
        overrides["database_url"] = postgres_url(settings.pg_port, user=PG_SERVICE_ROLE,
                                                 password=password(pg, SERVICE_PASSWORD_FILE))
        overrides["database_admin_url"] = postgres_url(settings.pg_port, password=password(pg))
    return overrides


def _load() -> Settings:
    """The settings of a command run next to `flashsale dev` (schema, load-sale, set-sku,
    reconcile): its embedded servers, with their credentials, unless the environment names others."""
    settings = load()
    return msgspec.structs.replace(settings, **_embedded_urls(settings, Path(settings.data_dir).resolve()))


def _embedded_servers(settings: Settings, data: Path,
                      nats_nodes: int = 1) -> tuple[list[Program], dict[str, str]]:
    """Programs for the embedded servers that NATS_URL / DATABASE_URL do not replace, and the
    settings that point every process at them. The credentials exist before the servers start:
    `_embedded_urls` creates them, and the servers find them in the same directories.
    `nats_nodes` > 1: a local NATS cluster of that many nodes instead of the single node."""
    me = f"{shlex.quote(sys.executable)} -m flashsale"
    servers = []
    overrides = _embedded_urls(settings, data)
    if "nats_url" in overrides and nats_nodes > 1:
        secret = password(data / "nats")
        nodes = dev_node_ports(nats_nodes, settings.nats_port, settings.nats_monitor_port)
        overrides["nats_url"] = ",".join(nats_url(n.client, secret) for n in nodes)
        servers += [Program(f"{NATS_NODE_PREFIX}{i + 1}", f"{me} embedded-nats-node --node {i} "
                            f"--size {nats_nodes} --data-dir {shlex.quote(str(data / 'nats-cluster'))}",
                            role="server") for i in range(nats_nodes)]
    elif "nats_url" in overrides:
        servers.append(Program("nats", f"{me} embedded-nats --data-dir {shlex.quote(str(data / 'nats'))} "
                                       f"--port {settings.nats_port} "
                                       f"--monitor-port {settings.nats_monitor_port}", role="server"))
    if "database_url" in overrides:
        servers.append(Program("postgres", f"{me} embedded-postgres --data-dir "
                                           f"{shlex.quote(str(data / 'postgres'))} --port {settings.pg_port}",
                               stop_signal="INT", role="server"))  # SIGINT: postgres's fast shutdown
    return servers, overrides


def cmd_dev(args: argparse.Namespace) -> int:
    """Everything on this machine under supervisord: the embedded NATS + Postgres (unless NATS_URL /
    DATABASE_URL point elsewhere), then schema, streams and the durability check, then the
    Procfile's processes and the demo sale. A program that dies is restarted; Ctrl-C stops all."""
    settings = load()
    data = Path(settings.data_dir).resolve()
    try:
        lock = hold_data_dir(data)
    except AlreadyRunning as e:
        print(f"flashsale: refusing to start: {e}", file=sys.stderr, flush=True)
        return 2
    servers, overrides = _embedded_servers(settings, data, args.nats_cluster)
    settings = msgspec.structs.replace(settings, **overrides)
    if any(p.name.startswith(NATS_NODE_PREFIX) for p in servers):
        # R-N streams: an ack means a quorum of nodes stored the intent, the durability a
        # cluster buys instead of an fsync per write on one node.
        settings = msgspec.structs.replace(settings, stream_replicas=min(args.nats_cluster, 3),
                                           require_sync_always=False)
    procfile = Path(args.procfile)
    app = app_programs(procfile, settings)
    busy = _ports_in_use(settings, servers, app)
    if busy:
        print(f"flashsale: refusing to start: in use already: {', '.join(busy)}. An earlier run may "
              "still be stopping, or another program holds them (choose other ports with "
              "FLASHSALE_*_PORT and the Procfile)", file=sys.stderr, flush=True)
        return 2
    _check_committers(settings, procfile, app)
    conf = write_conf(data / "supervisor", servers, app)
    env = {**os.environ, **to_env(settings)}
    env.pop("FLASHSALE_DATABASE_ADMIN_URL", None)  # the superuser is for schema changes only
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    # Its own session: Ctrl-C reaches supervisord only through us, as one orderly stop. It
    # inherits the data directory's lock, which both hold: it stays held while either is up.
    supervisord = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
        env=env, start_new_session=True, preexec_fn=_die_with_parent, pass_fds=(lock.fileno(),),
    )
    # Stop order: ingest first, the embedded servers last (flashsale.supervision.PRIORITY).
    programs = sorted(servers + app, key=lambda p: -PRIORITY[p.runs_as])
    groups: dict[str, int] = {}  # program -> pid = pgid, as last seen
    # Both set explicitly: a shell without job control starts background commands with SIGINT
    # ignored, and Python then never turns it into KeyboardInterrupt.
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    supervisor = Supervisor(conf.parent)
    try:
        _serve(settings, args, supervisor, supervisord, servers, app, groups)
        return _watch(supervisor, supervisord, groups)
    except DevError as e:
        print(f"flashsale: {e}", file=sys.stderr, flush=True)
        return 2
    except _Stop:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        if supervisord.poll() is None:
            supervisord.terminate()  # supervisord stops every program in PRIORITY order, then exits
        supervisord.wait()
        # Whatever outlived it (a dead supervisord's children, a Procfile shell's children).
        left = end_groups({p.name: groups[p.name] for p in programs if p.name in groups})
        lock.close()
        print(f"flashsale: stopped{f' (killed: {left})' if left else ''}", flush=True)


def _program_pids(supervisor: Supervisor, groups: dict[str, int]) -> dict[str, tuple[str, int]]:
    """supervisord's view of every program; remembers each running one's pid (its pgid)."""
    states = supervisor.states()
    for name, (_, pid) in states.items():
        if pid:
            groups[name] = pid
    return states


def _watch(supervisor: Supervisor, supervisord: subprocess.Popen[bytes], groups: dict[str, int]) -> int:
    """Until supervisord exits: should it die (kill -9, a crash), nothing may keep serving
    unwatched. Its programs got SIGTERM as it died (flashsale.supervision.dies_with_supervisor);
    the caller ends what is left of their process groups, and this run exits non-zero."""
    while supervisord.poll() is None:
        try:
            _program_pids(supervisor, groups)
        except OSError:
            pass  # going down: the exit is what counts
        time.sleep(WATCH_S)
    code = supervisord.returncode
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
    print(f"flashsale: supervisord {how}: stopping every process it ran; start again with "
          "make run", file=sys.stderr, flush=True)
    return 1


def _serve(settings: Settings, args: argparse.Namespace, supervisor: Supervisor,
           supervisord: subprocess.Popen[bytes], servers: list[Program], app: list[Program],
           groups: dict[str, int]) -> None:
    embedded = {p.name for p in servers}
    nodes = dev_node_ports(len([n for n in embedded if n.startswith(NATS_NODE_PREFIX)]),
                           settings.nats_port, settings.nats_monitor_port)
    if "nats" in embedded:
        _wait_until(lambda: port_open(settings.nats_port), "nats-server", 30, supervisord)
        print(f"flashsale: nats-server (JetStream) at {without_password(settings.nats_url)}", flush=True)
    if nodes:
        _wait_until(lambda: all(healthy(n.monitor) for n in nodes), "the NATS cluster", 60, supervisord)
        print(f"flashsale: NATS cluster of {len(nodes)} nodes, streams R{settings.stream_replicas}, "
              f"at {without_password(settings.nats_url)}", flush=True)
    found = verify(settings.nats_monitor_url)
    print(f"flashsale: JetStream durability: {found.message}", flush=True)
    # Our own server must prove it; an external one without a monitor URL cannot be asked.
    if settings.require_sync_always and (
        found.verdict == "interval" or ("nats" in embedded and found.verdict != "sync_always")
    ):
        raise DevError(f"refusing to serve: {found.message}. config/nats.conf sets sync_interval: "
                       "always; set FLASHSALE_REQUIRE_SYNC_ALWAYS=false to accept a weaker mode")
    if "postgres" in embedded:
        _wait_until(lambda: postgres_ready(settings.pg_port), "PostgreSQL", 60, supervisord)
        print(f"flashsale: PostgreSQL 16 at {without_password(settings.database_url)}", flush=True)
    try:
        asyncio.run(prepare(settings))
    except shardmap.ShardMapError as e:
        raise DevError(f"refusing to serve: {e}") from e
    except (OSError, asyncpg.PostgresError, nats.errors.Error, SchemaBusy) as e:
        raise DevError(f"schema and streams not prepared: {e!r}") from e
    names = [p.name for p in sorted(app, key=lambda p: PRIORITY[p.runs_as])]  # dependencies first

    def start() -> bool:
        try:
            supervisor.start(names)
        except OSError:  # its socket is not there yet
            return False
        return True

    _wait_until(start, "supervisord", RUN_WAIT_S, supervisord)
    ctl = f"{Path(sys.executable).parent}/supervisorctl -c {Path(settings.data_dir).resolve()}" \
          "/supervisor/supervisord.conf status"

    def not_running() -> list[str]:
        try:
            states = _program_pids(supervisor, groups)
        except OSError as e:
            return [f"supervisord: {e}"]
        return [f"{n} ({states[n][0]})" for n in names if states.get(n, ("?", 0))[0] != RUNNING]

    try:
        _wait_until(lambda: not not_running(), "the Procfile's processes", RUN_WAIT_S, supervisord)
    except DevError:
        # supervisord keeps restarting them with backoff; say which, keep supervising, no "ready".
        print(f"flashsale: not running after {RUN_WAIT_S} s: {', '.join(not_running())}; see their "
              f"log lines above and {ctl}. Not ready.", flush=True)
        return
    print(f"flashsale: running: {', '.join(names)}; status and restarts: {ctl}", flush=True)
    sale = Path(args.sale) if args.sale else None
    threading.Thread(target=_load_demo, args=(settings, sale), daemon=True).start()


async def _first_load(settings: Settings, path: Path) -> tuple[list[str], list[SkuState | Refusal]]:
    """The sale's SKUs that are not in Postgres yet, created; those that are (an operator may
    have changed them since) are left as they are. Returns (left as they are, outcomes)."""
    upserts = sku_changes.read_sale_file(path)
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch("SELECT sku FROM skus WHERE sku = ANY($1::text[])", [u.sku for u in upserts])
    finally:
        await conn.close()
    existing = {r["sku"] for r in rows}
    nc = await connect_nats_for_command(settings, "flashsale-load-sale")
    try:
        out = await sku_changes.apply_upserts(nc, settings, [u for u in upserts if u.sku not in existing],
                                        DEMO_LOAD_WAIT_S)
    finally:
        await nc.close()
    return sorted(existing), out


def _load_demo(settings: Settings, path: Path | None) -> None:
    """Once ingest is ready: the sale file's new SKUs (`path`; None: none), then "ready"."""
    base = f"http://{settings.ingest_host}:{settings.ingest_port}"
    if not _wait_ready([f"{base}/readyz"], RUN_WAIT_S):
        print("flashsale: ingest not ready; demo sale not loaded. Not ready.", flush=True)
        return
    if path is None:
        print(f"flashsale: ready: {base}/", flush=True)
        return
    try:
        kept, out = asyncio.run(_first_load(settings, path))
    except (sku_changes.AdminError, ConnectionError, OSError, asyncpg.PostgresError) as e:
        print(f"flashsale: demo sale not loaded: {e}", flush=True)
        return
    for item in out:
        print(f"flashsale: sale {path.name}: {msgspec.json.encode(item).decode()}", flush=True)
    if kept:
        print(f"flashsale: sale {path.name}: {', '.join(kept)} exist already, left as they are "
              "(`flashsale load-sale` applies the file again)", flush=True)
    print(f"flashsale: ready: the sale page is {base}/ ; or try\n"
          "  ALICE=$(.venv/bin/flashsale token alice)\n"
          f"  curl -si -X POST {base}/v1/purchases -H \"Authorization: Bearer $ALICE\" "
          "-H 'Content-Type: application/json' -H 'Idempotency-Key: demo-1' "
          "-H 'Prefer: wait=5' -d '{\"sku\": \"sneaker-42\", \"qty\": 1}'",
          flush=True)


def cmd_embedded_nats(args: argparse.Namespace) -> int:
    """What `dev` supervises: stale state cleared, then the process becomes nats-server."""
    s = load()
    run_nats(Path(args.data_dir or Path(s.data_dir) / "nats"), args.port or s.nats_port,
             args.monitor_port or s.nats_monitor_port)


def cmd_embedded_nats_node(args: argparse.Namespace) -> int:
    """What `dev --nats-cluster N` supervises: one node; it becomes nats-server."""
    s = load()
    run_node(Path(args.data_dir or Path(s.data_dir) / "nats-cluster"), args.node,
             dev_node_ports(args.size, s.nats_port, s.nats_monitor_port), Path(s.data_dir) / "nats")


def cmd_embedded_postgres(args: argparse.Namespace) -> int:
    """What `dev` supervises: stale state cleared, then the process becomes the postmaster."""
    s = load()
    run_postgres(Path(args.data_dir or Path(s.data_dir) / "postgres"), args.port or s.pg_port)


def cmd_supervisord_conf(args: argparse.Namespace) -> int:
    """For production: the Procfile's programs only, started at once, restarted like under dev."""
    conf = write_conf(Path(args.dir).resolve(), [], app_programs(Path(args.procfile), load()),
                      app_autostart=True)
    print(f"{conf}: run it with `supervisord -c {conf}` (settings from the environment)")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """Shell lines that point a process started by hand at `flashsale dev`'s servers, with their
    credentials: `eval "$(.venv/bin/flashsale env)"`, then e.g. `python -m committer --shard 0`."""
    settings = _load()
    for name, value in (("NATS_URL", settings.nats_url), ("DATABASE_URL", settings.database_url)):
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _seconds_above_0(text: str) -> float:
    """An argparse type: a finite number of seconds above 0 (else a usage error, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"seconds above 0, not {text!r}")
    return value


def cmd_purge_intents(args: argparse.Namespace) -> int:
    """Every intent recovery no longer needs, purged from each shard's intents stream
    (flashsale/retention.py): one JSON line per shard; with --every, again every S seconds."""
    settings = _load()
    while True:
        for shard in asyncio.run(purge_intents(settings, dry_run=args.dry_run)):
            print(msgspec.json.encode(shard).decode(), flush=True)
        if args.every is None:
            return 0
        time.sleep(args.every)


def cmd_schema(args: argparse.Namespace) -> int:
    asyncio.run(prepare(_load()))
    print("schema and streams are in place")
    return 0


def _print_outcome(out: list[SkuState | Refusal]) -> int:
    failed = 0
    for item in out:
        print(msgspec.json.encode(item).decode())
        failed += isinstance(item, Refusal)
    return 1 if failed else 0


def cmd_load_sale(args: argparse.Namespace) -> int:
    return _print_outcome(asyncio.run(sku_changes.load_sale(_load(), Path(args.file), args.timeout_s)))


def cmd_set_sku(args: argparse.Namespace) -> int:
    fields = {k: v for k, v in vars(args).items() if k in sku_changes.UPSERT_FIELDS and v is not None}
    upsert = sku_changes.make_upsert(args.sku, fields)
    return _print_outcome(asyncio.run(
        sku_changes.send_upserts(_load(), [upsert], args.timeout_s, "flashsale-set-sku")
    ))


def cmd_reshard(args: argparse.Namespace) -> int:
    before, after = asyncio.run(shardmap.reshard(_load(), args.shards))
    if before.shards == after.shards:
        print(f"the system already has {after.shards} shards")
    else:
        print(f"shard map: {before.shards} -> {after.shards} shards. Start committers 0..{after.shards - 1} "
              f"and every process with FLASHSALE_SHARDS={after.shards}")
    return 0


def cmd_verify_draw(args: argparse.Namespace) -> int:
    """Recompute a SKU's draw from the public endpoints; exit 1 if anything disagrees."""
    settings = load()
    base = args.url or f"http://{settings.ingest_host}:{settings.ingest_port}"
    try:
        report = asyncio.run(verify_draw(base, args.sku, args.id))
    except (aiohttp.ClientError, TimeoutError) as e:
        print(f"flashsale verify-draw: {base}: {e or type(e).__name__}", file=sys.stderr)
        return 1
    for problem in report.problems:
        print(f"FAIL {problem}")
    if report.ok:
        print(f"OK {args.sku}: {report.entries} entries in the order of HMAC-SHA256(seed, id); "
              f"seed {report.seed} matches commitment {report.commitment}")
        if report.rank_of_id is not None:
            print(f"{args.id}: number {report.rank_of_id} of {report.entries}")
    return 0 if report.ok else 1


def cmd_token(args: argparse.Namespace) -> int:
    """One buyer token per line, in the order given (the dev stack's HS256 secret signs them)."""
    try:
        tokens = dev_tokens(load(), args.users, args.ttl_s)
    except ConfigError as e:
        print(f"flashsale token: {e}", file=sys.stderr)
        return 2
    sys.stdout.write("".join(f"{t}\n" for t in tokens))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flashsale")
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run everything locally (make run)")
    dev.add_argument("--procfile", default=str(REPO_ROOT / "Procfile"))
    dev.add_argument("--sale", default=str(DEMO_SALE), help="sale file to load ('' for none)")
    dev.add_argument("--nats-cluster", dest="nats_cluster", type=int, default=1, metavar="N",
                     help="run a local NATS cluster of N nodes (3: R3 streams) instead of one node")
    dev.set_defaults(fn=cmd_dev)
    en = sub.add_parser("embedded-nats", help="run the embedded nats-server in the foreground")
    en.add_argument("--data-dir", help="default: <data_dir>/nats")
    en.add_argument("--port", type=int, help="default: nats_port")
    en.add_argument("--monitor-port", type=int, help="default: nats_monitor_port")
    en.set_defaults(fn=cmd_embedded_nats)
    nn = sub.add_parser("embedded-nats-node", help="run one node of dev's local NATS cluster")
    nn.add_argument("--node", type=int, required=True, help="0-based")
    nn.add_argument("--size", type=int, required=True)
    nn.add_argument("--data-dir", help="default: <data_dir>/nats-cluster")
    nn.set_defaults(fn=cmd_embedded_nats_node)
    ep = sub.add_parser("embedded-postgres", help="run the embedded PostgreSQL in the foreground")
    ep.add_argument("--data-dir", help="default: <data_dir>/postgres")
    ep.add_argument("--port", type=int, help="default: pg_port")
    ep.set_defaults(fn=cmd_embedded_postgres)
    sc = sub.add_parser("supervisord-conf", help="write a supervisord.conf running the Procfile")
    sc.add_argument("--procfile", default=str(REPO_ROOT / "Procfile"))
    sc.add_argument("--dir", required=True, help="where the conf, socket and pid file go")
    sc.set_defaults(fn=cmd_supervisord_conf)
    sub.add_parser("schema", help="apply the schema and create the streams").set_defaults(fn=cmd_schema)
    pi = sub.add_parser("purge-intents", help="purge decided intents from the intents streams")
    pi.add_argument("--dry-run", action="store_true", help="say what would go, purge nothing")
    pi.add_argument("--every", type=_seconds_above_0, metavar="S", help="purge again every S seconds")
    pi.set_defaults(fn=cmd_purge_intents)
    sub.add_parser("env", help="print the environment (with credentials) for a process started by "
                               "hand next to `flashsale dev`").set_defaults(fn=cmd_env)
    rs = sub.add_parser("reshard", help="change the system's shard count, between sales "
                                        "(no committer running, nothing reserved or undecided)")
    rs.add_argument("shards", type=int)
    rs.set_defaults(fn=cmd_reshard)
    ls = sub.add_parser("load-sale", help="create/adjust the SKUs of a sale file")
    ls.add_argument("file")
    ls.add_argument("--timeout-s", type=_seconds_above_0, default=10.0)
    ls.set_defaults(fn=cmd_load_sale)
    ss = sub.add_parser("set-sku", help="create or adjust one SKU")
    ss.add_argument("sku")
    ss.add_argument("--stock", type=int, required=True)
    ss.add_argument("--price-cents", dest="price_cents", type=int)
    ss.add_argument("--max-per-user", dest="max_per_user", type=int)
    ss.add_argument("--payment", choices=["none", "required"])
    ss.add_argument("--reservation-ttl-s", dest="reservation_ttl_s", type=int)
    ss.add_argument("--sale-start", dest="sale_start", help="ISO 8601")
    ss.add_argument("--sale-end", dest="sale_end", help="ISO 8601")
    ss.add_argument("--draw-window-s", dest="draw_window_s", type=int,
                    help="decide purchases clicked in the first N s by a verifiable draw")
    ss.add_argument("--timeout-s", type=_seconds_above_0, default=10.0)
    ss.set_defaults(fn=cmd_set_sku)
    vd = sub.add_parser("verify-draw", help="recompute a SKU's draw from the public endpoints")
    vd.add_argument("sku")
    vd.add_argument("--id", help="a purchase id: check it is among the entries, show its rank")
    vd.add_argument("--url", help="ingest's base URL (default: from the settings)")
    vd.set_defaults(fn=cmd_verify_draw)
    tk = sub.add_parser("token", help="print a buyer token (JWT) per user, for development")
    tk.add_argument("users", nargs="+", metavar="USER")
    tk.add_argument("--ttl-s", dest="ttl_s", type=int, default=DEV_TOKEN_TTL_S)
    tk.set_defaults(fn=cmd_token)
    # reconcile has its own options (gateway/reconcile.py); they pass through untouched.
    sub.add_parser("reconcile", help="compare the PSP ledger with orders and repair", add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reconcile"]:
        # Reconciliation belongs to the gateway: run its own command, so that plumbing never
        # imports the gateway (imports go one way).
        s = _load()
        env = {**os.environ, "NATS_URL": s.nats_url, "DATABASE_URL": s.database_url}
        return subprocess.call([sys.executable, "-m", "gateway.reconcile", *argv[1:]], env=env)
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.fn
    try:
        return command(args)
    except (ConnectionError, SchemaBusy) as e:  # a server is down or busy: say so, no traceback
        print(f"flashsale: {e}", file=sys.stderr)
        return 1
    except shardmap.ShardMapError as e:  # configured unlike the system, or not between sales
        print(f"flashsale: {e}", file=sys.stderr)
        return 2
    except SettingsError as e:  # FLASHSALE_* or the config file: nothing was done
        print(f"flashsale: {e}", file=sys.stderr)
        return 2
    except sku_changes.NotConfirmed as e:  # sent, but no writer answered in time
        print(f"flashsale: {e}", file=sys.stderr)
        return 1
    except sku_changes.AdminError as e:  # a SKU change or sale file that cannot be sent: nothing sent
        print(f"flashsale: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
