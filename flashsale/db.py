"""Postgres plumbing shared by every process (asyncpg)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

# The database's clock in epoch ms, for SQL. clock_timestamp(), not now(): now() is frozen at the
# start of the transaction, which may have waited for a lock since.
DB_NOW_MS = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
# Transaction-level advisory lock held by whatever changes the schema or the shard map
# (committer/schema.py, flashsale/shardmap.py): one such change at a time.
SCHEMA_LOCK_KEY = 7262


def quote_ident(name: str) -> str:
    """An SQL identifier (an identifier cannot be a query parameter): quoted, any quote doubled."""
    return '"' + name.replace('"', '""') + '"'


def user_of(database_url: str) -> str:
    """The role a URL connects as ("" when it names none)."""
    return unquote(urlsplit(database_url).username or "")


def split_database_url(database_url: str) -> tuple[str, str]:
    """The database a URL names, and the same URL naming the `postgres` maintenance database
    instead. Hosts (`h1:p1,h2:p2`, asyncpg tries them in order) and query parameters (e.g.
    `target_session_attrs=primary`, `sslrootcert=/path`) are kept as they are."""
    parts = urlsplit(database_url)
    return unquote(parts.path.lstrip("/")), urlunsplit(parts._replace(path="/postgres"))


async def ensure_database(database_url: str) -> None:
    """Create the database named in the URL if it does not exist (embedded default only)."""
    name, maintenance_url = split_database_url(database_url)
    conn = await asyncpg.connect(maintenance_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
    finally:
        await conn.close()
