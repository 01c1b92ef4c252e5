"""The draw's order: one definition, shared by the writer that decides it and by anyone who
verifies it (`flashsale verify-draw`). Pure; no I/O.

A SKU with a draw window has a secret seed (32 random bytes, hex) drawn when the operator
creates it. Before the sale only its commitment `sha256(seed)` is public; after the draw the seed
is revealed. The draw's entries are decided in ascending order of `HMAC-SHA256(seed, purchase
id)` (ties, which need a hash collision, by purchase id): a pure function of the seed and the
set of entries, whatever order they arrived in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

DRAW_WINDOW_MAX_S = 3600
# The writer decides a draw this long after its window closes: intents stamped inside the window
# and still on their way from ingest to the stream (an ingest batch, a JetStream retry) get in.
DRAW_GRACE_MS = 2_000
# Entries (and purchases waiting for the draw) per SKU: the writer holds them in memory and
# decides them in one step. Beyond it a purchase is rejected at once with `draw_full`.
DRAW_ENTRIES_MAX = 50_000

SEED_BYTES = 32
SEED_PATTERN = r"^[0-9a-f]{64}$"
_SEED_RE = re.compile(SEED_PATTERN)


def new_seed() -> str:
    return secrets.token_hex(SEED_BYTES)


def valid_seed(seed: str) -> bool:
    return _SEED_RE.fullmatch(seed) is not None


def commitment_of(seed: str) -> str:
    """The public commitment to a seed: hex SHA-256 of its bytes."""
    return hashlib.sha256(bytes.fromhex(seed)).hexdigest()


def draw_key(seed: str, purchase_id: str) -> bytes:
    return hmac.new(bytes.fromhex(seed), purchase_id.encode(), hashlib.sha256).digest()


def draw_order(seed: str, purchase_ids: Iterable[str]) -> list[str]:
    """The entries in the order the draw decides them (rank 1 first)."""
    key = bytes.fromhex(seed)
    return sorted(
        set(purchase_ids),
        key=lambda pid: (hmac.new(key, pid.encode(), hashlib.sha256).digest(), pid),
    )
