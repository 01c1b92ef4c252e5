"""Connecting to NATS and ensuring the JetStream streams of `proto.streams` exist."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, PersistMode, RetentionPolicy, StorageType, StreamConfig

from config.settings import Settings
from flashsale.credentials import CredentialsRefused
from flashsale.logs import kv
from flashsale.urls import without_password
from proto.streams import StreamLimits, StreamSpec, stream_specs

log = logging.getLogger("flashsale.jetstream")

_RETENTION = {"limits": RetentionPolicy.LIMITS, "workqueue": RetentionPolicy.WORK_QUEUE}
_DISCARD = {"old": DiscardPolicy.OLD, "new": DiscardPolicy.NEW}

# Between two rounds of connection attempts over the server list (per server, not per round).
RECONNECT_WAIT_S = 0.5

# JetStream: "stream name already in use with a different configuration".
ERR_STREAM_NAME_IN_USE = 10058


def nats_servers(nats_url: str) -> list[str]:
    """NATS_URL is one server or a comma-separated list of a cluster's nodes."""
    servers = [u.strip() for u in nats_url.split(",") if u.strip()]
    if not servers:
        raise ValueError(f"NATS_URL names no server: {nats_url!r}")
    return servers


class ConnectionLog:
    """One log line per change of the connection's state (lost, back), and one per kind of error
    while it lasts, instead of nats-py's traceback on every reconnect attempt."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.connected = True
        self._errors_seen: set[str] = set()
        # The client, once connected: its own close() also calls the disconnect callback, and
        # that is not a lost connection.
        self.clients: list[NATS] = []

    async def on_error(self, exc: Exception) -> None:
        kind = type(exc).__name__
        if kind not in self._errors_seen:
            self._errors_seen.add(kind)
            log.warning("nats error", extra=kv(client=self.name, error=repr(exc)))

    async def on_disconnected(self) -> None:
        if any(c.is_closed for c in self.clients):
            return
        if self.connected:
            self.connected = False
            log.warning("nats lost", extra=kv(client=self.name))

    async def on_reconnected(self) -> None:
        self.connected = True
        self._errors_seen.clear()
        log.info("nats back", extra=kv(client=self.name))


Callback = Callable[[], Awaitable[None]]


def _refuses_credentials(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text


def _then(first: Callback, second: Callback | None) -> Callback:
    async def both() -> None:
        await first()
        if second is not None:
            await second()

    return both


async def connect_nats(
    settings: Settings,
    name: str,
    *,
    disconnected_cb: Callback | None = None,
    reconnected_cb: Callback | None = None,
    closed_cb: Callback | None = None,
) -> NATS:
    """The one way a flashsale process connects: to any node of the list, and, once connected,
    to any other node when that one goes away, forever (a process never gives up on NATS).
    Connection changes are logged once each (`ConnectionLog`); the callbacks run after that."""
    state = ConnectionLog(name)
    nc = await connect_or_refuse(
        settings, name, error_cb=state.on_error,
        disconnected_cb=_then(state.on_disconnected, disconnected_cb),
        reconnected_cb=_then(state.on_reconnected, reconnected_cb),
        **({"closed_cb": closed_cb} if closed_cb is not None else {}),
    )
    state.clients.append(nc)
    return nc


async def connect_or_refuse(settings: Settings, name: str,
                            error_cb: Callable[[Exception], Awaitable[None]], **callbacks: Any) -> NATS:
    """nats.connect to the nodes of NATS_URL, reconnecting forever, except that credentials the
    server refuses before the first connection end the process (CredentialsRefused) instead of
    being retried forever in silence."""
    refused: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
    connected = False

    async def on_error(exc: Exception) -> None:
        await error_cb(exc)
        if not connected and _refuses_credentials(exc) and not refused.done():
            refused.set_result(exc)

    connecting = asyncio.ensure_future(nats.connect(
        servers=nats_servers(settings.nats_url), name=name, max_reconnect_attempts=-1,
        reconnect_time_wait=RECONNECT_WAIT_S, error_cb=on_error, **callbacks,
    ))
    either: list[asyncio.Future[Any]] = [connecting, refused]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        why = refused.result() if refused.done() else None
        refused.cancel()
        if not connecting.done():
            connecting.cancel()
            await asyncio.wait([connecting])
    if why is not None and connecting.cancelled():
        raise CredentialsRefused(name, f"NATS at {without_password(settings.nats_url)}", why)
    connected = True
    return connecting.result()


async def connect_nats_for_command(settings: Settings, name: str) -> NATS:
    """connect_nats for a command that runs once (schema, set-sku, load-sale): ConnectionError
    when no node answers within `command_connect_timeout_s`, where a service retries forever."""
    timeout_s = settings.command_connect_timeout_s
    try:
        return await asyncio.wait_for(connect_nats(settings, name), timeout_s)
    except TimeoutError:
        where = without_password(settings.nats_url)
        raise ConnectionError(f"NATS unreachable at {where} for {timeout_s:g} s") from None


def stream_limits(settings: Settings) -> StreamLimits:
    return StreamLimits(
        intents_max_age_s=settings.intents_max_age_s,
        intents_max_bytes=settings.intents_max_bytes,
        results_max_age_s=settings.results_max_age_s,
        duplicate_window_s=settings.duplicate_window_s,
        replicas=settings.stream_replicas,
    )


def stream_config(spec: StreamSpec) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=_RETENTION[spec.retention],
        storage=StorageType.FILE,
        discard=_DISCARD[spec.discard],
        discard_new_per_subject=spec.discard_new_per_subject,
        max_msgs_per_subject=spec.max_msgs_per_subject,
        max_age=spec.max_age_s or None,
        max_bytes=spec.max_bytes if spec.max_bytes >= 0 else None,
        duplicate_window=spec.duplicate_window_s,
        allow_direct=spec.allow_direct or None,
        num_replicas=spec.replicas,
        persist_mode=PersistMode.ASYNC if spec.persist_async else None,
    )


def stream_configs(settings: Settings) -> list[StreamConfig]:
    specs = stream_specs(settings.names, stream_limits(settings), settings.shards)
    return [stream_config(s) for s in specs]


# What a stream is: the code relies on these (one message per subject, discard new, ...), so
# the code's definition wins over whatever the server holds.
_DEFINED = (
    "subjects", "retention", "storage", "discard", "discard_new_per_subject",
    "max_msgs_per_subject", "allow_direct",
)
# What protects the data a stream holds: copies, how long and how much it keeps, how long it
# remembers a message id. A starting process only ever raises these to its settings; an
# operator who raised one on the server (e.g. `nats stream edit --replicas 3`) keeps it, and
# lowering one is an operator's explicit act on the server. Each maps a value to its size
# (None: the settings leave it to the server).
_GROW_ONLY: dict[str, Callable[[Any], float | None]] = {
    "num_replicas": lambda v: v or 1,
    "max_age": lambda v: v or math.inf,  # None / 0: no age limit
    "max_bytes": lambda v: math.inf if v is None or v < 0 else v,  # None / -1: no size limit
    "duplicate_window": lambda v: v or None,  # 0: the server's default (it reports the value)
}


@dataclasses.dataclass(frozen=True)
class Merge:
    """An existing stream's config brought up to what the settings want."""

    config: StreamConfig
    changed: dict[str, Any]  # field -> [server value, new value]
    kept: dict[str, Any]  # grow-only field -> server value, kept because above the settings


def merge_config(existing: StreamConfig, wanted: StreamConfig) -> Merge:
    changes: dict[str, Any] = {}
    kept: dict[str, Any] = {}
    for f in _DEFINED:
        value = getattr(wanted, f)
        if value is not None and value != getattr(existing, f):
            changes[f] = value
    for f, size in _GROW_ONLY.items():
        have, want = getattr(existing, f), getattr(wanted, f)
        size_want, size_have = size(want), size(have) or 0
        if size_want is None:
            continue
        if size_want > size_have:
            changes[f] = want
        elif size_have > size_want:
            kept[f] = have
    # The server fixes a stream's persist mode at creation and replicates only synchronously
    # persisted streams, so a stream created asynchronous keeps its single copy.
    if existing.persist_mode == PersistMode.ASYNC and "num_replicas" in changes:
        del changes["num_replicas"]
        kept["persist_mode"] = PersistMode.ASYNC
    # Starting from the server's config keeps whatever else an operator set (placement,
    # compression, metadata, ...).
    return Merge(
        dataclasses.replace(existing, **changes),
        {f: [getattr(existing, f), v] for f, v in changes.items()},
        kept,
    )


async def ensure_stream(js: JetStreamContext, wanted: StreamConfig) -> tuple[str, Merge | None]:
    """Create the stream, or raise an existing one to `wanted` (never lowering it): what was
    done ("created", "updated", "unchanged") and, for an existing stream, the merge."""
    assert wanted.name is not None
    try:
        info = await js.stream_info(wanted.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(wanted)
            return "created", None
        except nats.js.errors.BadRequestError as e:
            if e.err_code != ERR_STREAM_NAME_IN_USE:
                raise
            # Another process created it meanwhile, differently: merge with theirs.
            info = await js.stream_info(wanted.name)
    merge = merge_config(info.config, wanted)
    if not merge.changed:
        return "unchanged", merge
    await js.update_stream(merge.config)
    return "updated", merge


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    done: dict[str, Any] = {}
    for wanted in stream_configs(settings):
        action, merge = await ensure_stream(js, wanted)
        entry: dict[str, Any] = {"action": action}
        if merge is not None and merge.changed:
            entry["changed"] = merge.changed
        if merge is not None and merge.kept:
            entry["kept_above_settings"] = merge.kept
        if merge is not None and "persist_mode" in merge.kept:
            log.warning("stream keeps one copy", extra=kv(
                stream=wanted.name, replicas_wanted=settings.stream_replicas,
                why="created with asynchronous persistence, which the server cannot replicate",
                fix="delete it between sales (Postgres holds every result); the next start "
                    "creates it replicated"))
        done[str(wanted.name)] = entry
    log.info("streams ensured", extra=kv(replicas_wanted=settings.stream_replicas, streams=done))


async def unsubscribe_quietly(sub: Subscription | None) -> None:
    """End a push consumer's subscription, whatever the server says: it is closed or replaced
    because the process stops or the connection came back, and the server drops an ephemeral
    consumer by itself (or it went with the old connection)."""
    if sub is None:
        return
    try:
        await sub.unsubscribe()
    except Exception:  # closing anyway
        pass
