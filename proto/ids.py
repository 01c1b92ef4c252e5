"""Deterministic purchase ids and request fingerprints.

A retry of the same click (same user, same Idempotency-Key) must land on the same purchase on
any ingest instance, so the id is a keyed hash of both - never a counter or a random value.
The key (from `id_secret`, shared by every ingest instance) keeps ids unguessable.
"""

from __future__ import annotations

import hashlib
import secrets

from proto.identifiers import IDEMPOTENCY_KEY, PURCHASE_ID, PURCHASE_ID_PREFIX

ID_KEY_BYTES = 32  # the blake2b key of purchase ids: SHA-256 of `id_secret`
PURCHASE_ID_DIGEST_BYTES = 15  # 120 bits, 30 hex characters
REQUEST_HASH_BYTES = 8  # 16 hex characters: tells two bodies of one key apart, not a secret


def purchase_id(id_secret: bytes, user_id: str, idempotency_key: str) -> str:
    """Keyed with a server-side secret: nobody without it can compute another buyer's id."""
    # An unkeyed id could be computed by anyone who knows a buyer's name and key.
    assert len(id_secret) == ID_KEY_BYTES, "purchase ids are keyed with id_key(id_secret)"
    # NUL separates the parts so ("ab", "c") and ("a", "bc") cannot collide; that needs the key
    # to hold no NUL (its grammar, checked at the edge, is visible ASCII). Hex (C-fast) is
    # URL- and NATS-subject-safe; 120 bits make a collision between two clicks negligible.
    assert user_id and idempotency_key and "\x00" not in idempotency_key
    digest = hashlib.blake2b(
        f"{user_id}\x00{idempotency_key}".encode(), digest_size=PURCHASE_ID_DIGEST_BYTES,
        person=b"flashsale.pid", key=id_secret,
    ).hexdigest()
    pid = PURCHASE_ID_PREFIX + digest
    assert len(pid) == PURCHASE_ID.len_max
    return pid


def id_key(id_secret: str) -> bytes:
    """The hash key for `purchase_id` from a secret of any length (never empty: an empty secret
    is refused when ingest starts)."""
    assert id_secret
    return hashlib.sha256(id_secret.encode()).digest()


def request_hash(canonical_body: bytes) -> str:
    """Fingerprint of what the buyer asked for; the same key with another body is a 422."""
    assert canonical_body
    fingerprint = hashlib.blake2b(canonical_body, digest_size=REQUEST_HASH_BYTES).hexdigest()
    assert len(fingerprint) == 2 * REQUEST_HASH_BYTES
    return fingerprint


def new_idempotency_key() -> str:
    """A key for a request that sent none: in the grammar a client's key is held to, so
    `purchase_id` takes it like any other."""
    key = "srv_" + secrets.token_urlsafe(18)
    assert IDEMPOTENCY_KEY.matches(key), key
    return key
