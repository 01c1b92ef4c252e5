"""A server that refuses a process's credentials: the one failure a service does not retry."""

from __future__ import annotations

from typing import Any

import asyncpg

from flashsale.urls import without_password

# How a process started by hand gets the credentials of `flashsale dev`'s servers.
HAND_STARTED_HINT = 'under `make run`, start it with the environment of `eval "$(.venv/bin/flashsale env)"`'


class CredentialsRefused(SystemExit):
    """NATS or Postgres refused this process's credentials: no retry can help, so the process
    ends with this one line on stderr (exit 1). A SystemExit, so that no `except Exception`
    around a connect (a committer's rebuild loop) retries it forever."""

    def __init__(self, who: str, server: str, error: BaseException) -> None:
        super().__init__(f"{who}: {server} refused this process's credentials ({error}); "
                         f"{HAND_STARTED_HINT}")


# What asyncpg raises when PostgreSQL refuses the role or its password.
POSTGRES_REFUSED = (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)


async def postgres_pool(who: str, database_url: str, **options: Any) -> asyncpg.Pool:
    """asyncpg.create_pool, with refused credentials as CredentialsRefused."""
    try:
        return await asyncpg.create_pool(database_url, **options)
    except POSTGRES_REFUSED as e:
        raise CredentialsRefused(who, f"PostgreSQL at {without_password(database_url)}", e) from e
