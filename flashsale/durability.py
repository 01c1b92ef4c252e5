"""Is the JetStream durability a 202 relies on in effect? Asked of the running servers (their
monitoring endpoint, GET /varz), not of a configuration file: a file can say `sync_interval:
always` and the server still not do it (a second `jetstream` block silently replaces the first).

`check_durability(settings)` is what a process calls at start and logs; `flashsale dev` uses
`verify` and refuses to serve unless fsync-before-ack is in effect.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Literal

import msgspec

from config.settings import Settings


class JetStreamConfig(msgspec.Struct, frozen=True):
    """`jetstream.config` of /varz: the limits and sync mode the server runs with."""

    store_dir: str = ""
    max_memory_bytes: int = msgspec.field(default=0, name="max_memory")
    max_storage_bytes: int = msgspec.field(default=0, name="max_storage")
    sync_interval_ns: int = msgspec.field(default=0, name="sync_interval")
    sync_always: bool = False  # omitted by the server when false


class _JetStream(msgspec.Struct):
    config: JetStreamConfig


class _Varz(msgspec.Struct):
    server_name: str = ""
    jetstream: _JetStream | None = None  # absent when JetStream is off


VARZ_TIMEOUT_S = 1.0  # one GET /varz
VARZ_RETRY_S = 0.1  # between GETs of a server that is still starting


class DurabilityError(RuntimeError):
    """A server is reachable and does not fsync before it acknowledges, though that is required."""


# sync_always: fsync before every ack. interval: fsync every sync_interval (a power loss may forget
# acknowledged messages of the last interval). unverified: no monitor URL, or it did not answer.
Verdict = Literal["sync_always", "interval", "unverified"]


@dataclass(frozen=True)
class Durability:
    verdict: Verdict
    message: str
    configs: tuple[JetStreamConfig, ...] = ()  # one per server that answered


def read_jetstream_config(monitor_url: str, timeout_s: float = 5.0) -> JetStreamConfig:
    """The effective JetStream configuration of one server; retried until `timeout_s`, since a
    server that is starting answers a moment after it listens."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{monitor_url.rstrip('/')}/varz", timeout=VARZ_TIMEOUT_S) as resp:
                varz = msgspec.json.decode(resp.read(), type=_Varz)
            break
        except (urllib.error.URLError, OSError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(VARZ_RETRY_S)
    if varz.jetstream is None:
        raise DurabilityError(f"{monitor_url}: JetStream is not enabled on {varz.server_name!r}")
    return varz.jetstream.config


def _describe(c: JetStreamConfig) -> str:
    return f"max_file_store {c.max_storage_bytes >> 20} MiB, max_memory_store {c.max_memory_bytes >> 20} MiB"


def verify(monitor_urls: str, timeout_s: float = 5.0) -> Durability:
    """The sync mode every server named in `monitor_urls` (comma-separated) runs with."""
    urls = [u.strip() for u in monitor_urls.split(",") if u.strip()]
    if not urls:
        return Durability("unverified", "not verified (no monitor URL)")
    configs = []
    for url in urls:
        try:
            configs.append(read_jetstream_config(url, timeout_s))
        except (urllib.error.URLError, OSError, msgspec.DecodeError) as e:
            return Durability("unverified", f"not verified ({url} did not answer: {e})", tuple(configs))
    lax = [(u, c) for u, c in zip(urls, configs, strict=True) if not c.sync_always]
    if lax:
        url, c = lax[0]
        return Durability(
            "interval",
            f"sync_always NOT in effect on {url}: it fsyncs every {c.sync_interval_ns / 1e9:g} s, "
            "so a power loss may forget acknowledged intents",
            tuple(configs),
        )
    return Durability(
        "sync_always",
        f"sync_always in effect on {len(urls)} server(s) ({_describe(configs[0])})",
        tuple(configs),
    )


def check_durability(settings: Settings) -> str:
    """One line for the start-up log. Raises DurabilityError when a server answers that it does
    not fsync before acking while `require_sync_always` is set. Blocking (urllib, up to a few
    seconds): from async code call it through `asyncio.to_thread`."""
    found = verify(settings.nats_monitor_url)
    if found.verdict == "interval" and settings.require_sync_always:
        raise DurabilityError(f"{found.message} (require_sync_always is set)")
    return found.message
