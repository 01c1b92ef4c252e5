"""The end of `flashsale dev`'s start: once every ingest process is ready, the demo sale's new
SKUs, then "ready" and how to try it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import msgspec

from config.settings import CONFIG_DIR, Settings
from flashsale import sku_changes
from flashsale.jetstream import connect_nats_for_command
from flashsale.ports import wait_http_ok
from proto.messages import Refusal, SkuState

DEMO_SALE = CONFIG_DIR / "sales" / "demo.toml"
DEMO_LOAD_WAIT_S = 30.0  # for the shards' writers (whichever holds each lease) to apply the demo sale
INGEST_READY_WAIT_S = 60.0  # for every ingest's /readyz to answer 200 once their processes run


async def first_load(settings: Settings, path: Path) -> tuple[list[str], list[SkuState | Refusal]]:
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


def try_it(base: str) -> str:
    """The lines that end a good start: where the page is, and a purchase with curl."""
    return (f"flashsale: ready: the sale page is {base}/ ; or try\n"
            "  ALICE=$(.venv/bin/flashsale token alice)\n"
            f"  curl -si -X POST {base}/v1/purchases -H \"Authorization: Bearer $ALICE\" "
            "-H 'Content-Type: application/json' -H 'Idempotency-Key: demo-1' "
            "-H 'Prefer: wait=5' -d '{\"sku\": \"sneaker-42\", \"qty\": 1}'")


def not_ready(readiness: dict[str, str], timeout_s: float) -> list[str]:
    """Those of `readiness` (what -> its /readyz URL) that did not answer 200 by one deadline
    `timeout_s` away, as 'what (URL)'."""
    deadline = time.monotonic() + timeout_s
    return [f"{what} ({url})" for what, url in readiness.items()
            if wait_http_ok(url, max(0.0, deadline - time.monotonic())) != "ok"]


def load_demo(settings: Settings, path: Path | None, readiness: dict[str, str]) -> None:
    """Once every one of `readiness` (what -> its /readyz URL: launch.dev_checks.ingest_readiness)
    says ready: the sale file's new SKUs (`path`; None: none), then "ready"."""
    base = f"http://{settings.ingest_host}:{settings.ingest_port}"
    waiting = not_ready(readiness, INGEST_READY_WAIT_S)
    if waiting:
        print(f"flashsale: ingest not ready: {', '.join(waiting)}; demo sale not loaded. Not ready.",
              flush=True)
        return
    if path is None:
        print(f"flashsale: ready: {base}/", flush=True)
        return
    try:
        kept, out = asyncio.run(first_load(settings, path))
    except (sku_changes.AdminError, ConnectionError, OSError, asyncpg.PostgresError) as e:
        print(f"flashsale: demo sale not loaded: {e}", flush=True)
        return
    for item in out:
        print(f"flashsale: sale {path.name}: {msgspec.json.encode(item).decode()}", flush=True)
    if kept:
        print(f"flashsale: sale {path.name}: {', '.join(kept)} exist already, left as they are "
              "(`flashsale load-sale` applies the file again)", flush=True)
    print(try_it(base), flush=True)
