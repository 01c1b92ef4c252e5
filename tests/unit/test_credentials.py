"""Refused credentials end a process with one line naming the server without its password and
saying how to get the right ones; every other failure to connect is left to the caller's retry."""

from __future__ import annotations

import asyncpg
import pytest

from flashsale import credentials
from flashsale.credentials import HAND_STARTED_HINT, CredentialsRefused, postgres_pool

URL = "postgresql://flashsale:s3cret-password@127.0.0.1:15432/flashsale"


class FakeCreatePool:
    """asyncpg.create_pool: raises `error` if set, else returns a token pool."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.calls: list[tuple[str, dict[str, object]]] = []

    async def __call__(self, url: str, **options: object) -> object:
        self.calls.append((url, options))
        if self.error is not None:
            raise self.error
        return "pool"


@pytest.mark.parametrize("error", [asyncpg.InvalidPasswordError("password authentication failed"),
                                   asyncpg.InvalidAuthorizationSpecificationError("no such role")])
async def test_a_refused_password_or_role_is_credentials_refused(monkeypatch, error):
    monkeypatch.setattr(credentials.asyncpg, "create_pool", FakeCreatePool(error))
    with pytest.raises(CredentialsRefused) as refused:
        await postgres_pool("committer", URL, min_size=1)
    line = str(refused.value.code)
    assert "s3cret-password" not in line and "flashsale:***@127.0.0.1:15432" in line
    assert line.startswith("committer: PostgreSQL at ") and HAND_STARTED_HINT in line
    # A SystemExit: an `except Exception` retry loop around a connect does not swallow it.
    assert not isinstance(refused.value, Exception)


async def test_other_failures_propagate_as_they_are(monkeypatch):
    monkeypatch.setattr(credentials.asyncpg, "create_pool", FakeCreatePool(ConnectionRefusedError()))
    with pytest.raises(ConnectionRefusedError):
        await postgres_pool("ingest", URL)


async def test_options_reach_create_pool(monkeypatch):
    fake = FakeCreatePool(None)
    monkeypatch.setattr(credentials.asyncpg, "create_pool", fake)
    assert await postgres_pool("ingest", URL, min_size=2, max_size=5) == "pool"
    assert fake.calls == [(URL, {"min_size": 2, "max_size": 5})]
