"""Operator changes to SKUs go through the shard's single writer, like purchases do.

Used by the CLI (`flashsale set-sku`, `flashsale load-sale`) and by ingest's admin endpoint: publish
a SkuUpsert to the shard, then wait for the ResultBatch that says it was applied or refused.
"""

from __future__ import annotations

import asyncio
import math
import tomllib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg

from config.settings import Settings
from flashsale import shardmap
from flashsale.jetstream import connect_nats_for_command
from proto.draw import new_seed
from proto.identifiers import SKU
from proto.messages import (
    CLEARABLE_SKU_FIELDS,
    TIME_MAX_MS,
    TIME_MIN_MS,
    Payment,
    Refusal,
    SkuState,
    SkuUpsert,
    encode,
    out_of_bounds,
    result_decoder,
)
from proto.sharding import shard_of

UPSERT_FIELDS = ("stock", "price_cents", "max_per_user", "payment", "reservation_ttl_s",
                 "sale_start", "sale_end", "draw_window_s")
# Fields an explicit null resets to none (no cap, no window bound), and their SkuUpsert names.
CLEARABLE: dict[str, str] = {"max_per_user": "max_per_user", "sale_start": "sale_start_ms",
                             "sale_end": "sale_end_ms"}
assert set(CLEARABLE.values()) == CLEARABLE_SKU_FIELDS
_UPSERT_FIELD_OF = {proto_name: name for name, proto_name in CLEARABLE.items()}
PAYMENTS: dict[object, Payment] = {"none": "none", "required": "required"}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class AdminError(RuntimeError):
    """A SKU change that cannot be sent; `field` names the offending input field, if one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotConfirmed(AdminError):
    """SKU changes sent whose writers did not answer in time: they may still be applied."""


def to_ms(value: object, field: str = "time") -> int | None:
    """ISO 8601 string, datetime or epoch ms -> epoch ms (naive times are UTC). Raises AdminError
    for anything else and for times outside years 1..9999 UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise AdminError(f"{field}: not an ISO 8601 time: {text[:60]!r}", field) from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        # Exact integer arithmetic: no float rounding, and no overflow for offsets at the edges.
        ms = (value - _EPOCH) // _MS
    elif isinstance(value, int) and not isinstance(value, bool):
        ms = value
    elif isinstance(value, float) and math.isfinite(value):
        ms = int(value)
    else:
        raise AdminError(f"{field}: not a time: {value!r}", field)
    if not TIME_MIN_MS <= ms <= TIME_MAX_MS:
        shown = value.isoformat() if isinstance(value, datetime) else repr(value)
        raise AdminError(f"{field}: {shown} is outside years 1..9999 (UTC)", field)
    return ms


def make_upsert(sku: str, fields: Mapping[str, object]) -> SkuUpsert:
    """The one way to build a SkuUpsert (CLI, sale files, ingest's admin PUT).

    `fields` by UPSERT_FIELDS name (a "sku" key is allowed and ignored): an absent field keeps
    its value; None clears max_per_user, sale_start or sale_end and is refused for the others;
    sale times are datetimes (naive = UTC), ISO 8601 strings or epoch ms. Raises AdminError.
    """
    if not SKU.matches(sku):
        raise AdminError(f"sku {sku!r}: {SKU.describe()}", "sku")
    unknown = set(fields) - set(UPSERT_FIELDS) - {"sku"}
    if unknown:
        raise AdminError(f"unknown SKU fields: {sorted(unknown)}")
    given = {name: fields[name] for name in UPSERT_FIELDS if name in fields}
    for name, value in given.items():
        if value is None and name not in CLEARABLE:
            raise AdminError(f"{name} cannot be null (only {', '.join(CLEARABLE)} can be cleared)", name)
    stock = _int(given, "stock")
    if stock is None:
        raise AdminError("stock is required", "stock")
    payment = PAYMENTS.get(given.get("payment"))
    if payment is None and given.get("payment") is not None:
        raise AdminError(f"payment must be one of {', '.join(map(str, PAYMENTS))}, "
                         f"not {given['payment']!r}", "payment")
    sale_start_ms = to_ms(given.get("sale_start"), "sale_start")
    sale_end_ms = to_ms(given.get("sale_end"), "sale_end")
    if sale_start_ms is not None and sale_end_ms is not None and sale_end_ms <= sale_start_ms:
        raise AdminError("sale_end must be after sale_start", "sale_end")
    upsert = SkuUpsert(
        request_id=uuid.uuid4().hex, sku=sku, stock=stock, price_cents=_int(given, "price_cents"),
        max_per_user=_int(given, "max_per_user"), payment=payment,
        reservation_ttl_s=_int(given, "reservation_ttl_s"), sale_start_ms=sale_start_ms,
        sale_end_ms=sale_end_ms,
        clear=[CLEARABLE[name] for name, value in given.items() if value is None],
        # The writer keeps the first seed a SKU gets (its creation) and ignores later ones.
        draw_window_s=_int(given, "draw_window_s"), draw_seed=new_seed(),
    )
    if (outside := out_of_bounds(upsert)) is not None:
        name, why = outside
        field = _UPSERT_FIELD_OF.get(name, name)
        raise AdminError(why.replace(name, field, 1), field)
    return upsert


def _int(given: Mapping[str, object], name: str) -> int | None:
    value = given.get(name)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise AdminError(f"{name} must be an integer, not {value!r}", name)


async def apply_upserts(
    nc: Client, settings: Settings, upserts: list[SkuUpsert], timeout_s: float = 10.0
) -> list[SkuState | Refusal]:
    """Publish each upsert to its shard and wait until every one is applied or refused."""
    names = settings.names
    pending = {u.request_id: u for u in upserts}
    outcome: dict[str, SkuState | Refusal] = {}
    done = asyncio.Event()

    async def on_result(msg: Msg) -> None:
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
                raise NotConfirmed(
                    f"{len(pending) - len(outcome)} SKU changes not confirmed in {timeout_s}s: "
                    "is a committer running for every shard?"
                ) from None
    finally:
        await sub.unsubscribe()
    return [outcome[u.request_id] for u in upserts]


def read_sale_file(path: Path) -> list[SkuUpsert]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise AdminError(f"{path}: not a readable sale file: {e}") from None
    entries = data.get("sku", [])
    if not isinstance(entries, list):
        raise AdminError(f"{path}: the SKUs are [[sku]] tables", "sku")
    upserts = []
    for entry in entries:
        sku = entry.get("sku") if isinstance(entry, dict) else None
        if not isinstance(sku, str):
            raise AdminError(f"{path}: every [[sku]] entry needs a sku name: {entry!r}", "sku")
        upserts.append(make_upsert(sku, entry))
    return upserts


async def send_upserts(
    settings: Settings, upserts: list[SkuUpsert], timeout_s: float, client_name: str
) -> list[SkuState | Refusal]:
    """`apply_upserts` for a one-shot command, once its shard count is the system's (else
    ShardMapError): routed by another count, a SKU change reaches a writer that does not own it."""
    await shardmap.check_at(settings.database_url, settings.shards)
    nc = await connect_nats_for_command(settings, client_name)
    try:
        return await apply_upserts(nc, settings, upserts, timeout_s)
    finally:
        await nc.close()


async def load_sale(settings: Settings, path: Path, timeout_s: float = 10.0) -> list[SkuState | Refusal]:
    return await send_upserts(settings, read_sale_file(path), timeout_s, "flashsale-load-sale")
