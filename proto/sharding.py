"""SKU -> shard. Stable across processes, machines and Python versions (not the salted `hash`)."""

from __future__ import annotations

import zlib

# The name of `shard_of` as the system's shard map stores it (flashsale/shardmap.py): a process
# whose function is not the stored one must not route or decide anything. Change it whenever
# `shard_of` changes.
SHARD_FUNCTION = "crc32-utf8-mod"


def shard_of(sku: str, shards: int) -> int:
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return zlib.crc32(sku.encode()) % shards
