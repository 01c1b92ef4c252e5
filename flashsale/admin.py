"""Operator changes to SKUs go through the shard's single writer, like purchases do.

Used by the CLI (`flashsale set-sku`, `flashsale load-sale`) and by ingest's admin endpoint: publish
a SkuUpsert to the shard, then wait for the ResultBatch that says it was applied or refused.
"""

from __future__ import annotations

import asyncio
import tomllib
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from config.settings import Settings
from flashsale.jetstream import connect_nats
from proto.messages import Refusal, SkuState, SkuUpsert, encode, result_decoder
from proto.sharding import shard_of

UPSERT_FIELDS = ("stock", "price_cents", "max_per_user", "payment", "reservation_ttl_s",
                 "sale_start", "sale_end")


class AdminError(RuntimeError):
    pass


def to_ms(value: Any) -> int | None:
    """ISO 8601 string, datetime or epoch ms -> epoch ms (naive times are UTC)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp() * 1000)
    raise AdminError(f"not a time: {value!r}")


def make_upsert(sku: str, fields: dict[str, Any]) -> SkuUpsert:
    unknown = set(fields) - set(UPSERT_FIELDS) - {"sku"}
    if unknown:
        raise AdminError(f"unknown SKU fields: {sorted(unknown)}")
    if "stock" not in fields:
        raise AdminError("stock is required")
    return SkuUpsert(
        request_id=uuid.uuid4().hex, sku=sku, stock=fields["stock"],
        price_cents=fields.get("price_cents"), max_per_user=fields.get("max_per_user"),
        payment=fields.get("payment"), reservation_ttl_s=fields.get("reservation_ttl_s"),
        sale_start_ms=to_ms(fields.get("sale_start")), sale_end_ms=to_ms(fields.get("sale_end")),
    )


async def apply_upserts(
    nc: Client, settings: Settings, upserts: list[SkuUpsert], timeout_s: float = 10.0
) -> list[SkuState | Refusal]:
    """Publish each upsert to its shard and wait until every one is applied or refused."""
    names = settings.names
    pending = {u.request_id: u for u in upserts}
    outcome: dict[str, SkuState | Refusal] = {}
    done = asyncio.Event()

    async def on_result(msg) -> None:
        batch = result_decoder.decode(msg.data)
        states = {s.sku: s for s in batch.skus}
        for rid in batch.admin_applied:
            if rid in pending:
                outcome[rid] = states[pending[rid].sku]
        for r in batch.refusals:
            if r.kind == "sku_upsert" and r.key in pending:
                outcome[r.key] = r
        if len(outcome) == len(pending):
            done.set()

    sub = await nc.subscribe(names.results_all(), cb=on_result)
    try:
        js = nc.jetstream()
        for u in upserts:
            shard = shard_of(u.sku, settings.shards)
            await js.publish(names.intent(shard, "sku_upsert", u.request_id), encode(u))
        if upserts:
            try:
                await asyncio.wait_for(done.wait(), timeout_s)
            except TimeoutError:
                raise AdminError(
                    f"{len(pending) - len(outcome)} SKU changes not confirmed in {timeout_s}s: "
                    "is a committer running for every shard?"
                ) from None
    finally:
        await sub.unsubscribe()
    return [outcome[u.request_id] for u in upserts]


def read_sale_file(path: Path) -> list[SkuUpsert]:
    data = tomllib.loads(Path(path).read_text())
    return [make_upsert(entry["sku"], entry) for entry in data.get("sku", [])]


async def load_sale(settings: Settings, path: Path, timeout_s: float = 10.0) -> list[SkuState | Refusal]:
    nc = await connect_nats(settings, "flashsale-load-sale")
    try:
        return await apply_upserts(nc, settings, read_sale_file(path), timeout_s)
    finally:
        await nc.close()
