"""Deterministic purchase ids and request fingerprints.

A retry of the same click (same user, same Idempotency-Key) must land on the same purchase on
any ingest instance, so the id is a keyed hash of both - never a counter or a random value.
The key (from `id_secret`, shared by every ingest instance) keeps ids unguessable.
"""

from __future__ import annotations

import hashlib
import secrets

from proto.identifiers import PURCHASE_ID_PREFIX


def purchase_id(id_secret: bytes, user_id: str, idempotency_key: str) -> str:
    """Keyed with a server-side secret: nobody without it can compute another buyer's id."""
    # NUL separates the parts so ("ab", "c") and ("a", "bc") cannot collide. Hex (C-fast) is
    # URL- and NATS-subject-safe; 120 bits make a collision between two clicks negligible.
    digest = hashlib.blake2b(
        f"{user_id}\x00{idempotency_key}".encode(), digest_size=15, person=b"flashsale.pid",
        key=id_secret,
    ).hexdigest()
    return PURCHASE_ID_PREFIX + digest


def id_key(id_secret: str) -> bytes:
    """The hash key for `purchase_id` from a secret of any length."""
    return hashlib.sha256(id_secret.encode()).digest()


def request_hash(canonical_body: bytes) -> str:
    """Fingerprint of what the buyer asked for; the same key with another body is a 422."""
    return hashlib.blake2b(canonical_body, digest_size=8).hexdigest()


def new_idempotency_key() -> str:
    return "srv_" + secrets.token_urlsafe(18)
