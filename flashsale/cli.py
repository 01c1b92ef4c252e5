"""`flashsale` command line: run the dev system, apply the schema, load sales, reconcile."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import msgspec

from committer.schema import apply_schema
from config.settings import CONFIG_DIR, REPO_ROOT, Settings, load, to_env
from flashsale import admin
from ingest.auth import DEV_TOKEN_TTL_S, ConfigError, dev_tokens
from flashsale.db import ensure_database
from flashsale.embedded import start_nats, start_postgres
from flashsale.jetstream import connect_nats, ensure_streams

DEMO_SALE = CONFIG_DIR / "sales" / "demo.toml"


async def prepare(settings: Settings) -> None:
    """Schema and streams: idempotent, safe to run at every start."""
    await ensure_database(settings.database_url)
    await apply_schema(settings.database_url)
    nc = await connect_nats(settings, "flashsale-prepare")
    try:
        await ensure_streams(nc.jetstream(), settings)
    finally:
        await nc.close()


def _procfile_committers(procfile: Path) -> int:
    return len(re.findall(r"^\w[\w-]*:.*-m committer\b", procfile.read_text(), re.M))


def _wait_ready(urls: list[str], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    pending = list(urls)
    while pending and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(pending[0], timeout=1) as r:
                if r.status == 200:
                    pending.pop(0)
                    continue
        except OSError:
            pass
        time.sleep(0.2)
    return not pending


def cmd_dev(args: argparse.Namespace) -> int:
    """Everything on this machine: embedded NATS + Postgres (unless NATS_URL / DATABASE_URL point
    elsewhere), schema, streams, the Procfile under honcho, and the demo sale."""
    settings = load()
    data = Path(settings.data_dir).resolve()
    embedded = []
    overrides = {}
    if "NATS_URL" not in os.environ:
        n = start_nats(data / "nats", settings.nats_port)
        embedded.append(n)
        overrides["nats_url"] = n.url
        print(f"flashsale: nats-server (JetStream) at {n.url}, data in {data / 'nats'}", flush=True)
    if "DATABASE_URL" not in os.environ:
        p = start_postgres(data / "postgres", settings.pg_port)
        embedded.append(p)
        overrides["database_url"] = p.url
        print(f"flashsale: PostgreSQL 16 at {p.url}, data in {data / 'postgres'}", flush=True)
    settings = msgspec.structs.replace(settings, **overrides)
    procfile = Path(args.procfile)
    committers = _procfile_committers(procfile)
    if committers != settings.shards:
        print(f"flashsale: warning: {procfile} runs {committers} committers for "
              f"{settings.shards} shards (set FLASHSALE_SHARDS to match)", flush=True)
    try:
        asyncio.run(prepare(settings))
        env = {**os.environ, **to_env(settings)}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        honcho = subprocess.Popen(
            [sys.executable, "-m", "honcho", "-f", str(procfile), "-d", str(REPO_ROOT), "start"],
            env=env,
        )
        if args.sale:
            threading.Thread(target=_load_demo, args=(settings, Path(args.sale)), daemon=True).start()
        try:
            return honcho.wait()
        except KeyboardInterrupt:
            # honcho got the same Ctrl-C (same process group) and stops its processes.
            honcho.send_signal(signal.SIGINT)
            honcho.wait()
            return 0
    finally:
        for server in reversed(embedded):
            server.stop()
        print("flashsale: stopped", flush=True)


def _load_demo(settings: Settings, path: Path) -> None:
    urls = []
    if settings.committer_metrics_port:
        urls = [f"http://127.0.0.1:{settings.committer_metrics_port + s}/readyz" for s in range(settings.shards)]
    urls.append(f"http://{settings.ingest_host}:{settings.ingest_port}/readyz")
    if not _wait_ready(urls, 60):
        print("flashsale: processes not ready; demo sale not loaded", flush=True)
        return
    try:
        out = asyncio.run(admin.load_sale(settings, path))
    except admin.AdminError as e:
        print(f"flashsale: demo sale not loaded: {e}", flush=True)
        return
    for item in out:
        print(f"flashsale: sale {path.name}: {msgspec.json.encode(item).decode()}", flush=True)
    print(f"flashsale: ready: try\n  curl -si -X POST http://{settings.ingest_host}:{settings.ingest_port}"
          "/v1/purchases -H 'Content-Type: application/json' -H 'Idempotency-Key: demo-1' "
          "-H 'Prefer: wait=5' -d '{\"sku\": \"sneaker-42\", \"qty\": 1, \"user_id\": \"alice\"}'",
          flush=True)


def cmd_schema(args: argparse.Namespace) -> int:
    asyncio.run(prepare(load()))
    print("schema and streams are in place")
    return 0


def _print_outcome(out) -> int:
    failed = 0
    for item in out:
        print(msgspec.json.encode(item).decode())
        failed += isinstance(item, admin.Refusal)
    return 1 if failed else 0


def cmd_load_sale(args: argparse.Namespace) -> int:
    return _print_outcome(asyncio.run(admin.load_sale(load(), Path(args.file), args.timeout_s)))


def cmd_set_sku(args: argparse.Namespace) -> int:
    fields = {k: v for k, v in vars(args).items() if k in admin.UPSERT_FIELDS and v is not None}
    upsert = admin.make_upsert(args.sku, fields)

    async def run():
        settings = load()
        nc = await connect_nats(settings, "flashsale-set-sku")
        try:
            return await admin.apply_upserts(nc, settings, [upsert], args.timeout_s)
        finally:
            await nc.close()

    return _print_outcome(asyncio.run(run()))


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
    dev.set_defaults(fn=cmd_dev)
    sub.add_parser("schema", help="apply the schema and create the streams").set_defaults(fn=cmd_schema)
    ls = sub.add_parser("load-sale", help="create/adjust the SKUs of a sale file")
    ls.add_argument("file")
    ls.add_argument("--timeout-s", type=float, default=10.0)
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
    ss.add_argument("--timeout-s", type=float, default=10.0)
    ss.set_defaults(fn=cmd_set_sku)
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
        return subprocess.call([sys.executable, "-m", "gateway.reconcile", *argv[1:]])
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
