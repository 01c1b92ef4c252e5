"""Postgres plumbing shared by every process (asyncpg)."""

from __future__ import annotations

import asyncpg


async def ensure_database(database_url: str) -> None:
    """Create the database named in the URL if it does not exist (embedded default only)."""
    base, _, name = database_url.rpartition("/")
    name = name.split("?")[0]
    conn = await asyncpg.connect(base + "/postgres")
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            # An identifier cannot be a query parameter: quote it, doubling any quote inside.
            quoted = '"' + name.replace('"', '""') + '"'
            await conn.execute(f"CREATE DATABASE {quoted}")
    finally:
        await conn.close()
