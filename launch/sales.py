"""Commands about one sale: create or adjust its SKUs, check its draw, sign buyer tokens."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import aiohttp
import msgspec

from config.errors import ConfigError
from config.settings import load
from flashsale import sku_changes
from ingest.auth import dev_tokens
from launch.dev_servers import settings_next_to_dev
from launch.verify_draw import verify_draw
from proto.messages import Refusal, SkuState


def print_outcome(out: list[SkuState | Refusal]) -> int:
    """One JSON line per SKU; exit status 1 if any change was refused."""
    failed = 0
    for item in out:
        print(msgspec.json.encode(item).decode())
        failed += isinstance(item, Refusal)
    return 1 if failed else 0


def cmd_load_sale(args: argparse.Namespace) -> int:
    settings = settings_next_to_dev()
    return print_outcome(asyncio.run(sku_changes.load_sale(settings, Path(args.file), args.timeout_s)))


def cmd_set_sku(args: argparse.Namespace) -> int:
    fields = {k: v for k, v in vars(args).items() if k in sku_changes.UPSERT_FIELDS and v is not None}
    upsert = sku_changes.make_upsert(args.sku, fields)
    return print_outcome(asyncio.run(
        sku_changes.send_upserts(settings_next_to_dev(), [upsert], args.timeout_s, "flashsale-set-sku")
    ))


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
