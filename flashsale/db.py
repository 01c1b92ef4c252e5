"""Postgres connection helpers and schema application (asyncpg)."""

from __future__ import annotations

from importlib import resources

import asyncpg


SCHEMA_PARTS = [("flashsale", "schema.sql"), ("gateway", "schema.sql")]


def schema_sql() -> str:
    parts = []
    for package, name in SCHEMA_PARTS:
        path = resources.files(package).joinpath(name)
        if path.is_file():
            parts.append(path.read_text())
    return "\n".join(parts)


async def apply_schema(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        # Serialise concurrent starters (two committers booting at once).
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7262)")
            await conn.execute(schema_sql())
    finally:
        await conn.close()


async def ensure_database(database_url: str) -> None:
    """Create the database named in the URL if it does not exist (embedded default only)."""
    base, _, name = database_url.rpartition("/")
    name = name.split("?")[0]
    conn = await asyncpg.connect(base + "/postgres")
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
