"""Settings for every flashsale process.

Precedence: defaults < TOML file named by FLASHSALE_CONFIG (default config/dev.toml when present)
< environment variables (FLASHSALE_<FIELD>, plus the conventional NATS_URL and DATABASE_URL).
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from config.errors import SettingsError
from proto.subjects import Names

CONFIG_DIR = Path(__file__).resolve().parent


REPO_ROOT = CONFIG_DIR.parent
HS256_SECRET_MIN_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash


class Settings(msgspec.Struct, kw_only=True):
    nats_url: str = "nats://127.0.0.1:14222"
    database_url: str = "postgresql://flashsale@127.0.0.1:15432/flashsale"
    # Schema changes and resharding (`flashsale schema`, `dev`, `reshard`) connect with this one,
    # a role that owns the tables; "" = database_url. Services use database_url only, and
    # `flashsale dev` never hands this one to them.
    database_admin_url: str = ""
    namespace: str = "fs"
    shards: int = 2
    # A one-shot command (schema, set-sku, load-sale) gives up on NATS after this long; services
    # retry forever.
    command_connect_timeout_s: float = 10.0

    # ingest
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8080
    admin_token: str = ""  # empty: the admin API refuses everyone; else >= 32 bytes, not a JWT
    # Failed admin-token attempts per client address, on every route that takes the token (429
    # beyond, even with the right one). Always on: a burst of 5, then 1 a second.
    admin_failures_per_s: float = 1.0
    admin_failures_burst: int = 5
    body_max_bytes: int = 4096
    qty_max: int = 100
    wait_max_s: float = 30.0  # cap on Prefer: wait=N and ?wait=N
    waiters_max: int = 50_000  # long-polls held open per ingest instance
    results_cache_max: int = 200_000  # decided purchases remembered per ingest instance
    inflight_max: int = 20_000  # publishes awaiting a JetStream ack per ingest instance
    retry_after_s: int = 1
    # Group commit of intents (ingest/batcher.py): the intents that arrive while a batch is being
    # stored go out together packed into one message, one disk flush for all.
    ingest_batch_max: int = 500  # intents per packed message (at most 1000)
    ingest_linger_ms: float = 2.0  # under load, a batch waits this long to fill (0: never)
    ingest_batches_inflight_max: int = 1  # batches awaiting their ack at once, per shard
    # A shard whose writer sent no result or heartbeat for shard_silence_s has no live writer:
    # ingest then accepts at most shard_silent_accept_max more intents for it (503 beyond).
    shard_silence_s: float = 3.0
    shard_silent_accept_max: int = 1_000
    # Per-buyer token bucket on POST /v1/purchases (429 beyond it); 0 turns it off.
    user_rate_per_s: float = 20.0
    user_burst: int = 40
    rate_limit_users_max: int = 200_000

    # buyer authentication (JWT) and purchase ids: nothing here has a working default, so an
    # ingest that was not configured refuses to start instead of trusting anyone.
    jwt_issuer: str = ""
    jwt_audience: str = "flashsale"
    # Shared secrets (each >= HS256_SECRET_MIN_BYTES); the first signs `flashsale token`.
    jwt_hs256_secrets: list[str] = []
    jwt_jwks_file: str = ""  # the identity provider's public keys (RS256, ES256, EdDSA)
    jwt_leeway_s: float = 30.0  # clock skew allowed on exp/nbf
    id_secret: str = ""  # keys the purchase id hash; the same on every ingest instance
    # Lookups of unknown SKUs or purchase ids per client address (429 beyond); 0 turns it off.
    client_misses_per_s: float = 20.0
    client_misses_burst: int = 100

    # edge limits: what one client may hold of an ingest process. Each cap is clamped at
    # start to what the process's fd limit allows (ingest.edge.limits.size_limits) and logged.
    # A plain POST /v1/purchases is answered beside aiohttp (ingest/lean.py): the same answers
    # for less CPU. false sends every request through aiohttp.
    lean_purchases: bool = True
    idle_timeout_s: float = 10.0  # idle keep-alive, and the deadline to send a whole request head
    body_timeout_s: float = 10.0  # deadline to send a request body once its head is in (408)
    # Per client IP. Defaults leave room for crowds behind one address (office NAT, carrier NAT).
    client_connections_max: int = 2_000  # open connections per peer; beyond it: closed at once
    client_waits_max: int = 1_000  # long-polls held per client IP (429 beyond it)
    buyer_waits_max: int = 10  # long-polls held per buyer (429 beyond it)
    client_rate_per_s: float = 500.0  # token bucket per client IP on every request; 0 turns it off
    client_burst: int = 1_000
    # Comma-separated IPs/CIDRs of reverse proxies whose X-Forwarded-For is believed.
    trusted_proxies: str = ""

    # internal services: what only operators reach. Ingest's /metrics
    # is served on a port of its own on loopback, never on the public port (404 there). Each
    # ingest process needs its own (they may share ingest_port, not this one).
    ingest_metrics_port: int = 0  # 0 = no /metrics; the dev config sets 9180
    # Ingest processes `flashsale dev` and `flashsale supervisord-conf` run from each ingest line
    # of the Procfile, all on ingest_port; process i serves /metrics on ingest_metrics_port + i.
    # 0 = one per 4 cores of the box, at least one (flashsale.supervision.ingest_count).
    ingest_processes: int = 0
    # Request line + headers ingest reads; a larger head is answered 431 and the connection closed.
    head_max_bytes: int = 16_384

    # committer
    # Intents per transaction: whole messages are taken until this many intents are reached.
    batch_max: int = 2_000
    # Under load, a batch waits this long for more intents before it is committed: fewer
    # commits and result publishes per purchase. 0: never waits. Ingest already lingers and packs
    # what arrived into one message, and a batch takes every message waiting: with one ingest per
    # shard's traffic, 5 ms more gave 6 % more intents per commit at max and none at 0.8 x max,
    # for 5 ms on every decision (docs/benchmarks.md). Many ingest processes sending small
    # messages are the case for a few ms.
    commit_linger_ms: float = 0.0
    fetch_timeout_s: float = 0.5  # idle wait for intents; also the expiry tick when idle
    seen_max: int = 2_000_000  # purchase ids a committer remembers before asking Postgres
    # Unacked intents of a killed committer come back after this. Short is safe: a redelivered
    # intent that was in fact committed is recognised by id and only announced again.
    ack_wait_s: float = 3.0
    max_ack_pending: int = 50_000
    committer_metrics_port: int = 0  # 0 = none; else port + shard
    # Chaos testing only: die like kill -9 right after the Nth commit, before its acks (0 = never).
    crash_after_commit: int = 0

    # committer lease and recovery. The writer renews its shard's lease every
    # lease_ttl_s / 3, also while idle; a standby takes the shard over once the lease has gone
    # unrenewed for lease_ttl_s by the database's clock, so take-over after a writer stalls or
    # dies takes about lease_ttl_s.
    lease_ttl_s: float = 3.0
    standby_poll_s: float = 0.5  # how often a standby looks at the lease
    heartbeat_s: float = 1.0  # an idle writer publishes an empty ResultBatch this often
    rebuild_backoff_max_s: float = 5.0  # retries after a lost dependency: 0.1 s doubling up to this
    # Chaos testing only: after every Nth commit, fail as asyncpg did when Postgres was killed
    # mid-COMMIT (InternalClientError: committed or not, the client cannot tell) (0 = never).
    fail_after_commit: int = 0

    # streams
    intents_max_age_s: float = 7 * 24 * 3600.0
    intents_max_bytes: int = 1 << 30  # per shard; beyond it ingest answers 503 instead of losing intents
    results_max_age_s: float = 600.0
    duplicate_window_s: float = 120.0

    # NATS cluster: copies JetStream keeps of every stream. 1 for the embedded single node; 3 on
    # a 3-node cluster (an ack then means a quorum stored it, and one node may be lost). Starting
    # processes raise an existing stream to this, never lower it (flashsale.jetstream).
    stream_replicas: int = 1

    # gateway / payments
    psp_url: str = "http://127.0.0.1:8090"
    psp_api_key: str = "sk_test_flashsale"
    payment_attempts_max: int = 6  # sends of a call with no reservation deadline (search, void, refund)
    payment_backoff_base_s: float = 0.2
    payment_backoff_max_s: float = 5.0
    psp_timeout_s: float = 10.0  # one PSP HTTP call; past it the call counts as transient
    psp_currency: str = "usd"
    # No PSP call for a reservation this close to its deadline: no job starts, no retry is sent.
    payment_start_margin_s: float = 2.0
    payment_ack_wait_s: float = 60.0  # a killed gateway's jobs are redelivered after this
    gateway_concurrency: int = 64  # payment jobs in flight per gateway process
    # On SIGTERM, jobs in flight get this long to finish; the rest go back to the stream unsettled.
    # Below the supervisor's stop wait (flashsale.supervision.STOP_WAIT_S), which then SIGKILLs.
    gateway_drain_s: float = 10.0
    gateway_metrics_port: int = 0  # 0 = none; /metrics, /healthz, /readyz
    reconcile_grace_s: float = 120.0  # captures younger than this may still be confirming
    reconcile_page_size: int = 100

    # push: event streams and the live sale page. A stream holds a connection for
    # minutes, so each one is bounded in life and counted (purchase streams as long-polls).
    sse_heartbeat_s: float = 15.0  # a `: hb` comment this often keeps idle proxies from closing
    sse_max_s: float = 300.0  # a stream ends after this; the client resumes with Last-Event-ID
    sse_retry_ms: int = 1000  # the reconnect delay a stream tells EventSource
    sse_queue_poll_ms: float = 250.0  # a pending purchase's queue is re-read this often
    sku_events_interval_ms: float = 250.0  # at most one SKU update per stream per this
    sku_streams_max: int = 10_000  # SKU event streams per ingest instance (503 beyond)
    # POST /dev/token signs buyer tokens for anyone who asks: true in config/dev.toml only.
    dev_token_endpoint: bool = False
    # Host names (besides localhost and loopback addresses) a browser may use to reach that
    # helper: any other Host is refused, so a page whose name was rebound to 127.0.0.1 gets none.
    dev_token_hosts: list[str] = []

    # embedded dev servers
    data_dir: str = "data"
    nats_port: int = 14222
    pg_port: int = 15432

    # durability check: what the JetStream servers really do, read from their monitoring
    # endpoints at start (flashsale/durability.py); `flashsale dev` sets it for its embedded server
    nats_monitor_url: str = ""  # comma-separated, one per server (http://127.0.0.1:18222); "" = unchecked
    nats_monitor_port: int = 18222  # the embedded nats-server's monitoring port (loopback only)
    require_sync_always: bool = True  # refuse to start when a server does not fsync before each ack

    log_level: str = "INFO"

    @property
    def names(self) -> Names:
        return Names(self.namespace)

    @property
    def schema_database_url(self) -> str:
        """Where schema changes and resharding connect: database_admin_url, else database_url."""
        return self.database_admin_url or self.database_url


_LIST_FIELDS = {
    f.name for f in msgspec.structs.fields(Settings) if getattr(f.type, "__origin__", None) is list
}
_SECRET_LISTS = {"jwt_hs256_secrets"}
_ENV_ALIASES = {"NATS_URL": "nats_url", "DATABASE_URL": "database_url", "PSP_URL": "psp_url"}


def _default_file() -> Path | None:
    named = os.environ.get("FLASHSALE_CONFIG")
    if named:
        return Path(named)
    dev = CONFIG_DIR / "dev.toml"
    return dev if dev.exists() else None


def load(env: dict[str, str] | None = None, file: Path | None = None, **overrides: Any) -> Settings:
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    path = file if file is not None else _default_file()
    if path is not None:
        values.update(tomllib.loads(Path(path).read_text()))
    fields = set(Settings.__struct_fields__)
    for key, value in env.items():
        if key in _ENV_ALIASES:
            values[_ENV_ALIASES[key]] = value
        elif key.startswith("FLASHSALE_") and key[len("FLASHSALE_") :].lower() in fields:
            values[key[len("FLASHSALE_") :].lower()] = value
    values.update(overrides)
    unknown = set(values) - fields
    if unknown:
        raise SettingsError(f"unknown settings: {sorted(unknown)}")
    for name in _LIST_FIELDS & set(values):
        if isinstance(values[name], str):  # from the environment
            values[name] = _env_list(name, values[name])
    # strict=False lets "8080" from the environment become an int.
    try:
        settings = msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as e:  # "Expected `int`, got `str` - at `$.shards`"
        message, _, at = str(e).rpartition(" - at ")
        raise SettingsError(f"setting {at.strip('`').removeprefix('$.')}: {message}") from None
    _check_secrets(settings)
    return settings


EXIT_SETTINGS = 2  # as the CLI: settings a process cannot run with


def load_or_exit(program: str, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """`load` for a service's entry point: bad settings end it with one line on stderr and exit
    code 2, as the CLI does, not with a traceback."""
    try:
        return load(env, **overrides)
    except SettingsError as e:
        print(f"{program}: {e}", file=sys.stderr)
        raise SystemExit(EXIT_SETTINGS) from None


def _env_list(name: str, text: str) -> list[str]:
    """A list setting as the environment gives it: comma-separated, no brackets or quotes (the
    value is never echoed: it may be a secret). The secrets must name at least one: an empty
    value there is a template or a variable gone wrong, not a wish for none (leave it unset)."""
    if text.strip().startswith(("[", '"', "'")):
        raise SettingsError(f"setting {name}: in the environment a list is comma-separated, "
                            "without brackets or quotes")
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts and name in _SECRET_LISTS:
        raise SettingsError(f"setting {name}: set but names no secret; leave it unset for none")
    return parts


def _check_secrets(settings: Settings) -> None:
    """Secrets too short to be secret are refused wherever they came from, before any process
    uses one (ingest verifying, `flashsale token` signing), and never echoed."""
    for i, secret in enumerate(settings.jwt_hs256_secrets, start=1):
        if len(secret.encode()) < HS256_SECRET_MIN_BYTES:
            raise SettingsError(
                f"setting jwt_hs256_secrets: secret {i} of {len(settings.jwt_hs256_secrets)} has "
                f"{len(secret.encode())} bytes; each needs at least {HS256_SECRET_MIN_BYTES}")


def to_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process load exactly these settings."""
    out = {
        f"FLASHSALE_{k.upper()}": ",".join(v) if isinstance(v, list) else str(v)
        for k, v in msgspec.structs.asdict(settings).items()
    }
    out["NATS_URL"] = settings.nats_url
    out["DATABASE_URL"] = settings.database_url
    return out
