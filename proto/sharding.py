"""SKU -> shard. Stable across processes, machines and Python versions (not the salted `hash`)."""

from __future__ import annotations

import zlib


def shard_of(sku: str, shards: int) -> int:
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return zlib.crc32(sku.encode()) % shards
