"""The `flashsale` command: a table of subcommands, each run by a function of the module named
for what it does (launch/dev.py, dev_servers.py, operations.py, sales.py), and one place that
turns the errors a command may meet into one line on stderr and an exit status."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import TypeAlias

from committer.schema import SchemaBusy
from config.errors import SettingsError
from config.settings import REPO_ROOT
from flashsale import shardmap, sku_changes
from ingest.auth import DEV_TOKEN_TTL_S
from launch import dev, dev_servers, operations, sales
from launch.demo import DEMO_SALE

Command = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

# What a command may meet, and its exit status: 1, a server down or slow to answer; 2, input or
# configuration that cannot be (nothing was done or sent). Each says so in one line.
EXIT_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (ConnectionError, 1),  # a server is down
    (SchemaBusy, 1),  # another schema change holds the lock
    (shardmap.ShardMapError, 2),  # configured unlike the system, or not between sales
    (SettingsError, 2),  # FLASHSALE_* or the config file
    (sku_changes.NotConfirmed, 1),  # sent, but no writer answered in time
    (sku_changes.AdminError, 2),  # a SKU change or sale file that cannot be sent
)


def seconds_above_0(text: str) -> float:
    """An argparse type: a finite number of seconds above 0 (else a usage error, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"seconds above 0, not {text!r}")
    return value


def _command(sub: Subparsers, name: str, fn: Command, help: str,
             add_help: bool = True) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, add_help=add_help)
    parser.set_defaults(fn=fn)
    return parser


def _dev_commands(sub: Subparsers) -> None:
    """`dev` and the programs it supervises."""
    d = _command(sub, "dev", dev.cmd_dev, "run everything locally (make run)")
    d.add_argument("--procfile", default=str(REPO_ROOT / "Procfile"))
    d.add_argument("--sale", default=str(DEMO_SALE), help="sale file to load ('' for none)")
    d.add_argument("--nats-cluster", dest="nats_cluster", type=int, default=1, metavar="N",
                   help="run a local NATS cluster of N nodes (3: R3 streams) instead of one node")
    en = _command(sub, "embedded-nats", dev_servers.cmd_embedded_nats,
                  "run the embedded nats-server in the foreground")
    en.add_argument("--data-dir", help="default: <data_dir>/nats")
    en.add_argument("--port", type=int, help="default: nats_port")
    en.add_argument("--monitor-port", type=int, help="default: nats_monitor_port")
    nn = _command(sub, "embedded-nats-node", dev_servers.cmd_embedded_nats_node,
                  "run one node of dev's local NATS cluster")
    nn.add_argument("--node", type=int, required=True, help="0-based")
    nn.add_argument("--size", type=int, required=True)
    nn.add_argument("--data-dir", help="default: <data_dir>/nats-cluster")
    ep = _command(sub, "embedded-postgres", dev_servers.cmd_embedded_postgres,
                  "run the embedded PostgreSQL in the foreground")
    ep.add_argument("--data-dir", help="default: <data_dir>/postgres")
    ep.add_argument("--port", type=int, help="default: pg_port")
    sc = _command(sub, "supervisord-conf", dev_servers.cmd_supervisord_conf,
                  "write a supervisord.conf running the Procfile")
    sc.add_argument("--procfile", default=str(REPO_ROOT / "Procfile"))
    sc.add_argument("--dir", required=True, help="where the conf, socket and pid file go")
    _command(sub, "env", dev_servers.cmd_env, "print the environment (with credentials) for a "
                                              "process started by hand next to `flashsale dev`")


def _operation_commands(sub: Subparsers) -> None:
    """The system as a whole."""
    _command(sub, "schema", operations.cmd_schema, "apply the schema and create the streams")
    pi = _command(sub, "purge-intents", operations.cmd_purge_intents,
                  "purge decided intents from the intents streams")
    pi.add_argument("--dry-run", action="store_true", help="say what would go, purge nothing")
    pi.add_argument("--every", type=seconds_above_0, metavar="S", help="purge again every S seconds")
    rs = _command(sub, "reshard", operations.cmd_reshard, "change the system's shard count, between "
                  "sales (no committer running, nothing reserved or undecided)")
    rs.add_argument("shards", type=int)
    # reconcile has its own options (gateway/reconcile.py): main hands it what follows its name.
    _command(sub, "reconcile", operations.cmd_reconcile,
             "compare the PSP ledger with orders and repair", add_help=False)


def _sale_commands(sub: Subparsers) -> None:
    """One sale's SKUs, its draw, its buyers' tokens."""
    ls = _command(sub, "load-sale", sales.cmd_load_sale, "create/adjust the SKUs of a sale file")
    ls.add_argument("file")
    ls.add_argument("--timeout-s", type=seconds_above_0, default=10.0)
    ss = _command(sub, "set-sku", sales.cmd_set_sku, "create or adjust one SKU")
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
    ss.add_argument("--timeout-s", type=seconds_above_0, default=10.0)
    vd = _command(sub, "verify-draw", sales.cmd_verify_draw,
                  "recompute a SKU's draw from the public endpoints")
    vd.add_argument("sku")
    vd.add_argument("--id", help="a purchase id: check it is among the entries, show its rank")
    vd.add_argument("--url", help="ingest's base URL (default: from the settings)")
    tk = _command(sub, "token", sales.cmd_token, "print a buyer token (JWT) per user, for development")
    tk.add_argument("users", nargs="+", metavar="USER")
    tk.add_argument("--ttl-s", dest="ttl_s", type=int, default=DEV_TOKEN_TTL_S)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="flashsale")
    sub = top.add_subparsers(dest="command", required=True)
    _dev_commands(sub)
    _operation_commands(sub)
    _sale_commands(sub)
    return top


def parse(argv: list[str]) -> argparse.Namespace:
    """The command and its arguments; what follows `reconcile` goes to it untouched."""
    top = parser()
    args, rest = top.parse_known_args(argv)
    if args.command == "reconcile":
        args.reconcile_args = rest
    elif rest:
        top.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    command: Command = args.fn
    try:
        return command(args)
    except tuple(kind for kind, _ in EXIT_STATUS) as e:
        print(f"flashsale: {e}", file=sys.stderr)
        return next(status for kind, status in EXIT_STATUS if isinstance(e, kind))


if __name__ == "__main__":
    sys.exit(main())
