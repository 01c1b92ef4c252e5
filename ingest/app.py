"""The ingest HTTP app: validate, derive the purchase id, publish the intent, answer 202; serve
purchase and SKU state from the result stream with Postgres (then the intent stream) behind it.

Ingest keeps no state that matters: everything it remembers is a cache of the result stream, so
any instance answers any request and a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from importlib import resources

import asyncpg
import msgspec
import nats
from aiohttp import web
from nats.js import JetStreamContext
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from config.settings import Settings
from flashsale.admin import to_ms
from flashsale.jetstream import ensure_streams
from flashsale.logs import kv
from ingest import admission, metrics, problems
from ingest.publisher import Overloaded, Publisher
from ingest.ratelimit import RateLimiter
from ingest.results import SKUS_MAX, ResultsHub, Watch
from ingest.schemas import (
    SKU_MAX_LEN,
    SKU_PATTERN,
    STATUSES,
    encode_json,
    purchase_request_decoder,
    sku_upsert_decoder,
    sku_view_of,
    view_of,
)
from proto.clock import now_ms
from proto.ids import IDEMPOTENCY_KEY_MAX_LEN, is_purchase_id, new_idempotency_key, purchase_id, request_hash
from proto.messages import (
    FINAL_STATUSES,
    Cancel,
    Decision,
    Purchase,
    Refusal,
    SkuState,
    SkuUpsert,
    encode,
    intent_decoder,
)
from proto.sharding import shard_of

log = logging.getLogger("ingest")

ADMIN_TIMEOUT_S = 10.0  # an operator waits this long for the committer to apply a SKU change
DB_TIMEOUT_S = 2.0
UNKNOWN_SKU_TTL_S = 1.0
UNKNOWN_SKUS_MAX = 10_000
READY_DB_TIMEOUT_S = 1.0
JSON = "application/json"

_PURCHASE_COLUMNS = (
    "id, sku, user_id, qty, status, reason, amount_cents, accepted_at_ms, decided_at_ms, "
    "updated_at_ms, expires_at_ms, request_hash"
)
_SKU_COLUMNS = (
    "sku, stock, reserved, sold, price_cents, max_per_user, payment, reservation_ttl_s, "
    "sale_start_ms, sale_end_ms"
)


class Ingest:
    """Connections and caches of one ingest process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names = settings.names
        self.hub = ResultsHub(self.names, settings.results_cache_max, settings.waiters_max)
        self.nc: nats.NATS | None = None
        self.js: JetStreamContext | None = None
        self.pool: asyncpg.Pool | None = None
        self.publisher: Publisher | None = None
        self.streams_ready = False
        self._unknown_skus: dict[str, float] = {}  # sku -> monotonic time the miss expires
        self.limiter = (
            RateLimiter(settings.user_rate_per_s, settings.user_burst, settings.rate_limit_users_max)
            if settings.user_rate_per_s > 0 else None
        )
        self.closing = False

    async def start(self) -> None:
        s = self.settings
        self.nc = await nats.connect(
            s.nats_url, name="flashsale-ingest", max_reconnect_attempts=-1, reconnect_time_wait=0.5,
            error_cb=self._nats_error, disconnected_cb=self._nats_disconnected,
            reconnected_cb=self._nats_reconnected,
        )
        self.js = self.nc.jetstream(timeout=5.0)
        await ensure_streams(self.js, s)
        self.streams_ready = True
        self.pool = await asyncpg.create_pool(s.database_url, min_size=1, max_size=10)
        self.publisher = Publisher(self.nc, s.inflight_max)
        await self.publisher.start()
        metrics.INFLIGHT.set_function(lambda: self.publisher.inflight)
        metrics.WAITERS.set_function(lambda: self.hub.watch_count)
        await self.hub.start(self.js)
        # Rejections carry no SKU state, so an instance started after a sell-out would never
        # learn it from the stream: start from Postgres (after subscribing, so nothing newer is
        # overwritten).
        rows = await self.pool.fetch(
            f"SELECT {_SKU_COLUMNS} FROM skus ORDER BY sku LIMIT $1", SKUS_MAX, timeout=DB_TIMEOUT_S
        )
        for row in rows:
            self.hub.remember_sku(SkuState(**dict(row)))
        log.info("ingest connected", extra=kv(nats=s.nats_url, namespace=s.namespace))

    async def stop(self) -> None:
        self.closing = True
        await self.hub.stop()
        if self.publisher is not None:
            await self.publisher.stop()
        if self.nc is not None:
            try:
                await self.nc.drain()
            except Exception:  # closing anyway
                pass
        if self.pool is not None:
            await self.pool.close()

    async def _nats_error(self, exc: Exception) -> None:
        log.warning("nats error: %r", exc)

    async def _nats_disconnected(self) -> None:
        if not self.closing:
            log.warning("nats disconnected")

    async def _nats_reconnected(self) -> None:
        log.info("nats reconnected")
        self.hub.on_reconnected()

    # -- lookups: cache -> Postgres -> intent stream ---------------------------------------

    async def stored_intent(self, subject: str) -> Purchase | None:
        data = await self.publisher.last_message(self.names.intents_stream, subject)
        if data is None:
            return None
        intent = intent_decoder.decode(data)
        return intent if isinstance(intent, Purchase) else None

    async def purchase_from_db(self, pid: str) -> Decision | None:
        row = await self.pool.fetchrow(
            f"SELECT {_PURCHASE_COLUMNS} FROM purchases WHERE id = $1", pid, timeout=DB_TIMEOUT_S
        )
        if row is None:
            return None
        d = Decision(**dict(row))
        self.hub.remember_final(d)
        return d

    async def lookup(self, pid: str) -> Decision | Purchase | None:
        """The purchase's current state; a Purchase (the intent) means pending."""
        d = self.hub.decision(pid)
        if d is not None:
            return d
        d = await self.purchase_from_db(pid)
        if d is not None:
            return d
        # Accepted (perhaps by another instance) but not decided yet. The SKU, hence the shard,
        # is unknown from the id alone: ask every shard's subject at once.
        found = await asyncio.gather(
            *(self.stored_intent(self.names.intent(shard, "purchase", pid))
              for shard in range(self.settings.shards))
        )
        for intent in found:
            if intent is not None:
                # Decided between the Postgres read and now? The cache has it by then.
                return self.hub.decision(pid) or intent
        return None

    async def sku_state(self, sku: str) -> SkuState | None:
        state = self.hub.skus.get(sku)
        if state is not None:
            return state
        now = time.monotonic()
        if self._unknown_skus.get(sku, 0.0) > now:
            return None
        row = await self.pool.fetchrow(
            f"SELECT {_SKU_COLUMNS} FROM skus WHERE sku = $1", sku, timeout=DB_TIMEOUT_S
        )
        if row is None:
            # Remember the miss briefly: a flood of one junk SKU costs one query per second.
            if len(self._unknown_skus) >= UNKNOWN_SKUS_MAX:
                self._unknown_skus.clear()
            self._unknown_skus[sku] = now + UNKNOWN_SKU_TTL_S
            return None
        state = SkuState(**dict(row))
        self.hub.remember_sku(state)
        return self.hub.skus.get(sku, state)

    async def ready(self) -> bool:
        if self.nc is None or not self.nc.is_connected or not self.streams_ready or self.pool is None:
            return False
        if not self.hub.listening:
            return False
        try:
            await self.pool.fetchval("SELECT 1", timeout=READY_DB_TIMEOUT_S)
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            return False
        return True


STATE = web.AppKey("ingest", Ingest)


# -- request helpers ----------------------------------------------------------------------


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=encode_json(body), status=status, content_type=JSON, headers=headers)


def _parse_wait(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _prefer_wait(request: web.Request) -> float | None:
    """`Prefer: wait=N` (RFC 7240). A preference is a hint: a malformed one is ignored."""
    header = request.headers.get("Prefer")
    if not header:
        return None
    for part in header.split(","):
        for token in part.split(";"):
            name, _, value = token.strip().partition("=")
            if name.strip().lower() == "wait":
                return _parse_wait(value.strip().strip('"'))
    return None


def _format_s(wait_s: float) -> str:
    return str(int(wait_s)) if wait_s == int(wait_s) else f"{wait_s:g}"


def _valid_idempotency_key(key: str) -> bool:
    # Visible ASCII (0x21-0x7E); the str methods run in C, a per-character loop would not.
    return (
        1 <= len(key) <= IDEMPOTENCY_KEY_MAX_LEN and key.isascii() and key.isprintable()
        and " " not in key
    )


def _unsupported_media(request: web.Request) -> web.Response | None:
    if request.content_type == JSON:
        return None
    metrics.REJECTS.labels("unsupported_media_type").inc()
    return problems.problem(
        415, "unsupported_media_type", "Unsupported media type",
        f"send the body as {JSON} (got {request.content_type!r})",
    )


def _decode_error(exc: msgspec.DecodeError) -> web.Response:
    if isinstance(exc, msgspec.ValidationError):
        metrics.REJECTS.labels("validation").inc()
        err = problems.from_msgspec_error(exc)
        return problems.validation(err.message, [err])
    metrics.REJECTS.labels("malformed_json").inc()
    return problems.problem(400, "malformed_json", "Malformed JSON", f"body is not valid JSON: {exc}")


def _newer(current: Decision | Purchase, candidate: Decision | None) -> Decision | Purchase:
    if candidate is None:
        return current
    if isinstance(current, Purchase) or candidate.updated_at_ms > current.updated_at_ms:
        return candidate
    return current


async def _wait_until(
    watch: Watch,
    current: Decision | Purchase,
    done: Callable[[Decision | Purchase], bool],
    deadline: float,
    stop_on_refusal: bool = False,
) -> Decision | Purchase:
    """Wait until `done(state)` (or a refusal, if asked, or the deadline); return the state."""
    loop = asyncio.get_running_loop()
    while True:
        # Read after (re-)arming: an update between two waits is in watch.decision already.
        current = _newer(current, watch.decision)
        if done(current) or (stop_on_refusal and watch.refusal is not None):
            return current
        remaining = deadline - loop.time()
        if remaining <= 0:
            return current
        try:
            await asyncio.wait_for(watch.fut, remaining)
        except TimeoutError:
            return current
        watch.rearm()


def _decided(item: Decision | Purchase) -> bool:
    return isinstance(item, Decision)


def _final(item: Decision | Purchase) -> bool:
    return isinstance(item, Decision) and item.status in FINAL_STATUSES


def _status(item: Decision | Purchase) -> str:
    return item.status if isinstance(item, Decision) else "pending"


# -- routes -------------------------------------------------------------------------------


async def create_purchase(request: web.Request) -> web.Response:
    ing = request.app[STATE]
    s = ing.settings
    if (bad := _unsupported_media(request)) is not None:
        return bad
    body = await request.read()
    try:
        req = purchase_request_decoder.decode(body)
    except msgspec.DecodeError as exc:
        return _decode_error(exc)
    if req.qty > s.qty_max:
        metrics.REJECTS.labels("validation").inc()
        return problems.validation(
            f"qty must be <= {s.qty_max}",
            [problems.FieldError("$.qty", f"Expected `int` <= {s.qty_max}")],
        )
    key = request.headers.get("Idempotency-Key")
    if key is None:
        key = new_idempotency_key()
    elif not _valid_idempotency_key(key):
        metrics.REJECTS.labels("bad_idempotency_key").inc()
        return problems.problem(
            400, "bad_idempotency_key", "Invalid Idempotency-Key",
            f"Idempotency-Key must be 1..{IDEMPOTENCY_KEY_MAX_LEN} visible ASCII characters",
        )
    if ing.limiter is not None:
        wait_s = ing.limiter.acquire(req.user_id, time.monotonic())
        if wait_s:
            metrics.REJECTS.labels("rate_limited").inc()
            return problems.problem(
                429, "rate_limited", "Too many requests",
                f"user {req.user_id!r} sends purchases faster than {s.user_rate_per_s:g}/s",
                retry_after_s=RateLimiter.retry_after_s(wait_s),
            )
    if req.sku not in ing.hub.skus and await ing.sku_state(req.sku) is None:
        # Every SKU reaches ingest on the result stream or from Postgres: this one was never
        # created. Refused here, so junk SKUs never reach JetStream or a committer.
        metrics.REJECTS.labels("unknown_sku").inc()
        return problems.problem(
            422, "unknown_sku", "Unknown SKU", f"SKU {req.sku!r} does not exist",
            headers={"Idempotency-Key": key},
        )
    pid = purchase_id(req.user_id, key)
    rhash = request_hash(encode((req.sku, req.qty, req.user_id, req.payment_token)))
    subject = ing.names.intent(shard_of(req.sku, s.shards), "purchase", pid)
    headers = {"Location": f"/v1/purchases/{pid}", "Idempotency-Key": key}

    wait_s = _prefer_wait(request)
    wait_s = min(wait_s, s.wait_max_s) if wait_s else 0.0
    # Registered before publishing: a decision that lands before the ack is not missed.
    watch = ing.hub.watch(pid) if wait_s > 0 else None
    try:
        existing: Purchase | None = None
        if ing.hub.is_sold_out(req.sku):
            # Sold-out fast path, but a retry of an accepted purchase still gets that purchase.
            existing = await ing.stored_intent(subject)
            if existing is None:
                metrics.REJECTS.labels("sold_out").inc()
                return problems.problem(
                    409, "sold_out", "Sold out", f"SKU {req.sku!r} is sold out; no purchase was created",
                    headers={"Idempotency-Key": key},
                )
            current: Decision | Purchase | None = None
        else:
            intent = Purchase(
                id=pid, sku=req.sku, qty=req.qty, user_id=req.user_id, request_hash=rhash,
                accepted_at_ms=now_ms(), payment_token=req.payment_token,
            )
            stored_now = await ing.publisher.publish(subject, encode(intent), pid)
            current = intent if stored_now else None
        if current is None:
            # A retry (or a concurrent twin) of an existing purchase: same body or 422.
            existing = existing or await ing.stored_intent(subject)
            if existing is None:
                # Refused as a duplicate yet not readable (purged meanwhile?): retryable.
                raise Overloaded("intent_missing")
            if existing.request_hash != rhash:
                metrics.REJECTS.labels("idempotency_key_reused").inc()
                return problems.problem(
                    422, "idempotency_key_reused", "Idempotency key reused",
                    "idempotency key reused with a different request",
                    headers={"Idempotency-Key": key},
                )
            current = ing.hub.decision(pid) or await ing.purchase_from_db(pid) or existing
        if watch is not None:
            deadline = asyncio.get_running_loop().time() + wait_s
            current = await _wait_until(watch, current, _decided, deadline)
            headers["Preference-Applied"] = f"wait={_format_s(wait_s)}"
    finally:
        if watch is not None:
            ing.hub.unwatch(watch)
    status = 200 if watch is not None and _status(current) != "pending" else 202
    return _json(view_of(current), status, headers)


async def get_purchase(request: web.Request) -> web.Response:
    ing = request.app[STATE]
    pid = request.match_info["id"]
    if not is_purchase_id(pid):
        return problems.not_found(f"no purchase {pid!r} (not a purchase id)")
    query_wait = request.query.get("wait")
    if query_wait is not None:
        wait_s = _parse_wait(query_wait)
        if wait_s is None:
            return problems.problem(400, "bad_query", "Invalid query", "wait must be a number >= 0")
        prefer = False
    else:
        wait_s = _prefer_wait(request) or 0.0
        prefer = wait_s > 0
    wait_s = min(wait_s, ing.settings.wait_max_s)
    seen = request.query.get("seen")
    if seen is not None and seen not in STATUSES:
        return problems.problem(
            400, "bad_query", "Invalid query", f"seen must be one of {', '.join(STATUSES)}"
        )
    watch = ing.hub.watch(pid) if wait_s > 0 else None
    headers: dict[str, str] = {}
    try:
        current = await ing.lookup(pid)
        if current is None:
            return problems.not_found(f"no purchase {pid}")
        if watch is not None:
            status = _status(current)
            if seen is None and status not in FINAL_STATUSES:
                seen = status
            if seen == status and status not in FINAL_STATUSES:  # a final state never changes
                deadline = asyncio.get_running_loop().time() + wait_s
                current = await _wait_until(watch, current, lambda c: _status(c) != seen, deadline)
            if prefer:
                headers["Preference-Applied"] = f"wait={_format_s(wait_s)}"
    finally:
        if watch is not None:
            ing.hub.unwatch(watch)
    return _json(view_of(current), 200, headers)


async def cancel_purchase(request: web.Request) -> web.Response:
    ing = request.app[STATE]
    pid = request.match_info["id"]
    if not is_purchase_id(pid):
        return problems.not_found(f"no purchase {pid!r} (not a purchase id)")
    wait_s = _prefer_wait(request)
    wait_s = min(wait_s, ing.settings.wait_max_s) if wait_s else 0.0
    headers = {"Location": f"/v1/purchases/{pid}"}
    watch = ing.hub.watch(pid) if wait_s > 0 else None
    try:
        current = await ing.lookup(pid)
        if current is None:
            return problems.not_found(f"no purchase {pid}")
        status = _status(current)
        if status in ("confirmed", "rejected"):
            return _cannot_cancel(pid, status)
        if status in FINAL_STATUSES:  # cancelled or expired: nothing left to give back
            return _json(view_of(current), 200, headers)
        subject = ing.names.intent(shard_of(current.sku, ing.settings.shards), "cancel", pid)
        # The dedupe window is per stream, so the cancel's msg id must differ from the purchase's.
        # False (already requested) is fine: cancelling is idempotent.
        await ing.publisher.publish(subject, encode(Cancel(id=pid)), f"cancel:{pid}")
        if watch is not None:
            deadline = asyncio.get_running_loop().time() + wait_s
            current = await _wait_until(watch, current, _final, deadline, stop_on_refusal=True)
            headers["Preference-Applied"] = f"wait={_format_s(wait_s)}"
            if watch.refusal is not None:
                return _cannot_cancel(pid, watch.refusal.status or _status(current), watch.refusal.reason)
            if _status(current) in ("confirmed", "rejected"):
                return _cannot_cancel(pid, _status(current))
            if _final(current):
                return _json(view_of(current), 200, headers)
    finally:
        if watch is not None:
            ing.hub.unwatch(watch)
    return _json(view_of(current), 202, headers)


def _cannot_cancel(pid: str, status: str, reason: str | None = None) -> web.Response:
    metrics.REJECTS.labels("cannot_cancel").inc()
    detail = f"purchase {pid} is {status} and cannot be cancelled"
    if reason:
        detail += f" ({reason})"
    return problems.problem(409, "cannot_cancel", "Cannot cancel", detail)


async def get_sku(request: web.Request) -> web.Response:
    ing = request.app[STATE]
    sku = request.match_info["sku"]
    if len(sku) > SKU_MAX_LEN:
        return problems.not_found(f"no SKU {sku!r}")
    state = await ing.sku_state(sku)
    if state is None:
        return problems.not_found(f"no SKU {sku!r}")
    return _json(sku_view_of(state))


_SKU_RE = re.compile(SKU_PATTERN)


async def put_sku(request: web.Request) -> web.Response:
    ing = request.app[STATE]
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        metrics.REJECTS.labels("unauthorized").inc()
        return problems.problem(
            401, "unauthorized", "Unauthorized", "send Authorization: Bearer <admin token>",
            headers={"WWW-Authenticate": 'Bearer realm="flashsale-admin"'},
        )
    if not hmac.compare_digest(token.strip().encode(), ing.settings.admin_token.encode()):
        metrics.REJECTS.labels("forbidden").inc()
        return problems.problem(403, "forbidden", "Forbidden", "the admin token is not valid")
    sku = request.match_info["sku"]
    if len(sku) > SKU_MAX_LEN or not _SKU_RE.match(sku):
        metrics.REJECTS.labels("validation").inc()
        return problems.validation(
            "invalid SKU in path",
            [problems.FieldError("sku", f"1..{SKU_MAX_LEN} characters matching {SKU_PATTERN}")],
        )
    if (bad := _unsupported_media(request)) is not None:
        return bad
    try:
        req = sku_upsert_decoder.decode(await request.read())
    except msgspec.DecodeError as exc:
        return _decode_error(exc)
    given = {f: getattr(req, f) for f in req.__struct_fields__ if getattr(req, f) is not msgspec.UNSET}
    clear = [f"{f}_ms" if f.startswith("sale_") else f for f, v in given.items() if v is None]
    sale_start_ms, sale_end_ms = to_ms(given.get("sale_start")), to_ms(given.get("sale_end"))
    if sale_start_ms is not None and sale_end_ms is not None and sale_end_ms <= sale_start_ms:
        metrics.REJECTS.labels("validation").inc()
        return problems.validation(
            "sale_end must be after sale_start",
            [problems.FieldError("$.sale_end", "must be after sale_start")],
        )
    request_id = uuid.uuid4().hex
    upsert = SkuUpsert(
        request_id=request_id, sku=sku, stock=req.stock, price_cents=given.get("price_cents"),
        max_per_user=given.get("max_per_user"), payment=given.get("payment"),
        reservation_ttl_s=given.get("reservation_ttl_s"), sale_start_ms=sale_start_ms,
        sale_end_ms=sale_end_ms, clear=clear,
    )
    wait = ing.hub.admin_wait(request_id, sku)
    if wait is None:
        raise Overloaded("waiters_max")
    try:
        subject = ing.names.intent(shard_of(sku, ing.settings.shards), "sku_upsert", request_id)
        await ing.publisher.publish(subject, encode(upsert), f"admin:{request_id}")
        try:
            outcome = await asyncio.wait_for(wait.fut, ADMIN_TIMEOUT_S)
        except TimeoutError:
            return problems.problem(
                504, "admin_timeout", "Not applied yet",
                f"the change (request {request_id}) was queued but not applied within "
                f"{ADMIN_TIMEOUT_S:g} s; it may still be applied: check GET /v1/skus/{sku}",
                retry_after_s=ing.settings.retry_after_s,
            )
    finally:
        ing.hub.admin_done(request_id)
    if isinstance(outcome, Refusal):
        metrics.REJECTS.labels("sku_upsert_refused").inc()
        return problems.problem(409, "sku_upsert_refused", "SKU change refused", outcome.reason)
    state = outcome or await ing.sku_state(sku)
    if state is None:
        return problems.not_found(f"no SKU {sku!r}")
    return _json(sku_view_of(state), 200, {"X-Request-Id": request_id})


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if await request.app[STATE].ready():
        return _json({"status": "ready"})
    return problems.problem(
        503, "not_ready", "Not ready", "NATS, the streams or Postgres are not available",
        retry_after_s=request.app[STATE].settings.retry_after_s,
    )


async def metrics_endpoint(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


_OPENAPI = resources.files("ingest").joinpath("openapi.json").read_bytes()


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=_OPENAPI, content_type=JSON)


async def openapi_yaml(request: web.Request) -> web.Response:
    # JSON is a subset of YAML 1.2: one document serves both names, no YAML dependency.
    return web.Response(body=_OPENAPI, content_type="application/yaml")


def create_app(settings: Settings) -> web.Application:
    ing = Ingest(settings)
    app = web.Application(
        client_max_size=settings.body_max_bytes,
        middlewares=[
            admission.middleware(
                lambda: ing.publisher.check_capacity(), settings.body_max_bytes,
                settings.retry_after_s,
            )
        ],
    )
    app[STATE] = ing

    async def on_startup(_: web.Application) -> None:
        await ing.start()

    async def on_cleanup(_: web.Application) -> None:
        await ing.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_post("/v1/purchases", create_purchase)
    app.router.add_get("/v1/purchases/{id}", get_purchase)
    app.router.add_post("/v1/purchases/{id}/cancel", cancel_purchase)
    app.router.add_get("/v1/skus/{sku}", get_sku)
    app.router.add_put("/v1/admin/skus/{sku}", put_sku)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/openapi.yaml", openapi_yaml)
    return app
