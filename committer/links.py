"""The committer's connections to NATS and Postgres: opened together, closed together, and the
one place that says (once per change) when either is lost or back."""

from __future__ import annotations

import logging

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext

from committer.recovery import Dependency, DependencyName
from config.settings import Settings
from flashsale.credentials import POSTGRES_REFUSED, CredentialsRefused
from flashsale.db import DB_NOW_MS
from flashsale.jetstream import connect_or_refuse, ensure_streams
from flashsale.logs import kv
from flashsale.urls import without_password

log = logging.getLogger("committer")


class Unreachable(Exception):
    """Connecting to one of the servers failed."""

    def __init__(self, dependency: DependencyName, error: BaseException) -> None:
        super().__init__(f"{dependency} unreachable: {error!r}")
        self.dependency = dependency


class Health:
    """The state of both dependencies of one committer process, across rebuilds."""

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.deps = {"postgres": Dependency("postgres"), "nats": Dependency("nats")}

    def lost(self, name: DependencyName, error: BaseException) -> None:
        if self.deps[name].lost():
            log.warning(f"{name} lost", extra=kv(shard=self.shard, error=repr(error)))

    def back(self, name: DependencyName) -> None:
        if self.deps[name].back():
            log.info(f"{name} back", extra=kv(shard=self.shard))


class Links:
    def __init__(
        self, nc: Client, js: JetStreamContext, conn: asyncpg.Connection, watch: _NatsWatch
    ) -> None:
        self.nc = nc
        self.js = js
        self.conn = conn
        self._watch = watch

    @classmethod
    async def open(cls, settings: Settings, shard: int, health: Health) -> Links:
        watch = _NatsWatch(shard, health)
        nc = await watch.connect(settings)
        try:
            js = nc.jetstream()
            await ensure_streams(js, settings)
            conn = await _connect_postgres(settings, shard)
        except BaseException:
            await watch.close(nc)
            raise
        return cls(nc, js, conn, watch)

    @property
    def alive(self) -> bool:
        return self.nc.is_connected and not self.conn.is_closed()

    async def close(self) -> None:
        await self._watch.close(self.nc)
        self.conn.terminate()  # no goodbye round trip: the server may be gone


class _NatsWatch:
    """NATS connection events as Health changes, except the disconnect we cause ourselves."""

    def __init__(self, shard: int, health: Health) -> None:
        self.shard = shard
        self.health = health
        self.closing = False
        self.connected = False  # once: the first connection of this process's Links

    async def connect(self, settings: Settings) -> Client:
        try:
            # Not flashsale.jetstream.connect_nats: the committer reports connection changes
            # through its Health (one line each, with the shard), and so does its own wiring.
            nc = await connect_or_refuse(
                settings, f"committer-{self.shard}", error_cb=self._error,
                disconnected_cb=self._disconnected, reconnected_cb=self._reconnected,
            )
        except Exception as e:
            raise Unreachable("nats", e) from e
        self.connected = True
        self.health.back("nats")
        return nc

    async def close(self, nc: Client) -> None:
        self.closing = True
        if not nc.is_closed:
            try:
                await nc.close()
            except Exception:  # closing anyway
                pass

    async def _disconnected(self) -> None:
        if not self.closing:
            self.health.lost("nats", ConnectionError("disconnected"))

    async def _reconnected(self) -> None:
        self.health.back("nats")

    async def _error(self, error: Exception) -> None:
        # nats-py's default logs a traceback per failed reconnect; `_disconnected` says it once,
        # and so does this while the first connection is still being tried.
        if not self.connected:
            self.health.lost("nats", error)
        log.debug("nats error", extra=kv(shard=self.shard, error=repr(error)))


def postgres_session(settings: Settings, shard: int) -> dict[str, str]:
    """Server settings of a committer's Postgres session."""
    ttl_ms = str(int(settings.lease_ttl_s * 1000))
    return {
        "application_name": f"committer-{shard}",
        # A writer stalled inside a transaction must not keep the lease row locked past its
        # TTL, nor a standby wait on that lock for long.
        "idle_in_transaction_session_timeout": ttl_ms,
        "lock_timeout": ttl_ms,
    }


# The session whose transaction holds the shard's lease row (an update of it in progress: the
# row's xmax names that transaction) while the lease it committed last has expired.
_END_STALLED_HOLDER = f"""
SELECT pg_terminate_backend(l.pid), l.pid
FROM shard_leases s
JOIN pg_locks l ON l.locktype = 'transactionid' AND l.transactionid = s.xmax AND l.granted
WHERE s.shard = $1 AND s.expires_at_ms <= {DB_NOW_MS} AND l.pid <> pg_backend_pid()
"""


async def end_stalled_holder(conn: asyncpg.Connection, shard: int) -> int | None:
    """End the Postgres session of a holder whose lease has expired while its transaction still
    holds the lease row: the pid ended, or None. Postgres ends a session idle inside a
    transaction by itself (postgres_session), but not one stalled in the middle of the extended
    protocol: asyncpg prepares a statement with Parse, Describe and Flush, no Sync, and a writer
    stopped right then keeps the row locked, and a standby out, for as long as it is stopped."""
    row = await conn.fetchrow(_END_STALLED_HOLDER, shard)
    return int(row["pid"]) if row is not None and row["pg_terminate_backend"] else None


async def _connect_postgres(settings: Settings, shard: int) -> asyncpg.Connection:
    try:
        conn = await asyncpg.connect(
            settings.database_url,
            # A query this slow means the connection is gone (the lease has expired long since).
            command_timeout=2 * settings.lease_ttl_s,
            server_settings=postgres_session(settings, shard),
        )
    except POSTGRES_REFUSED as e:
        where = f"PostgreSQL at {without_password(settings.database_url)}"
        raise CredentialsRefused(f"committer-{shard}", where, e) from e
    except Exception as e:
        raise Unreachable("postgres", e) from e
    # "postgres back" is said once a lease write went through (a read-only database accepts
    # connections and refuses the writes: that is not back).
    return conn
