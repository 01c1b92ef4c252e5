"""Identity in tests: the settings every test stack runs with, and tokens and ids for its buyers."""

from __future__ import annotations

from functools import lru_cache

import jwt

from proto.clock import now_ms
from proto.ids import id_key, purchase_id

TEST_ISSUER = "flashsale-test"
TEST_AUDIENCE = "flashsale"
TEST_JWT_SECRET = "test-jwt-secret-at-least-32-bytes-long"
TEST_ID_SECRET = "test-id-secret"
TEST_ADMIN_TOKEN = "test-admin-token-at-least-32-bytes"
TOKEN_TTL_S = 3 * 3600

# Passed to config.settings.load(...) by the `settings` fixture.
AUTH_SETTINGS = {
    "jwt_issuer": TEST_ISSUER,
    "jwt_audience": TEST_AUDIENCE,
    "jwt_hs256_secrets": [TEST_JWT_SECRET],
    "id_secret": TEST_ID_SECRET,
    "admin_token": TEST_ADMIN_TOKEN,
}


@lru_cache(maxsize=100_000)
def token(user: str) -> str:
    now_s = now_ms() // 1000
    claims = {"sub": user, "iss": TEST_ISSUER, "aud": TEST_AUDIENCE, "iat": now_s, "nbf": now_s,
              "exp": now_s + TOKEN_TTL_S}
    return jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def pid(user: str, key: str) -> str:
    """The purchase id a test stack derives for (user, Idempotency-Key)."""
    return purchase_id(id_key(TEST_ID_SECRET), user, key)
