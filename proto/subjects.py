"""Subject and stream names. Every name hangs off a namespace so tests can share one server."""

from __future__ import annotations

import msgspec

# One-letter subject tokens per intent kind: an intent sent alone has a subject unique per
# purchase id (or admin request id), which lets JetStream refuse a second copy (max 1 message
# per subject). Ingest's packed batches are on subjects unique per batch ("b").
KIND_TOKEN = {"purchase": "p", "confirm": "c", "release": "r", "cancel": "x", "sku_upsert": "admin"}
BATCH_TOKEN = "b"


class Names(msgspec.Struct, frozen=True):
    namespace: str = "fs"

    def intents_stream(self, shard: int) -> str:
        """One stream per shard: its stream sequence orders exactly that shard's intents (a
        purchase's place in the queue), and shards flush their disks in parallel."""
        return f"{self.namespace.upper()}_INTENTS_{shard}"

    @property
    def results_stream(self) -> str:
        return f"{self.namespace.upper()}_RESULTS"

    @property
    def payments_stream(self) -> str:
        return f"{self.namespace.upper()}_PAYMENTS"

    @property
    def deadletter_stream(self) -> str:
        return f"{self.namespace.upper()}_DEADLETTER"

    def intents_of_shard(self, shard: int) -> str:
        return f"{self.namespace}.intents.{shard}.>"

    def intent(self, shard: int, kind: str, key: str) -> str:
        """Subject of one intent; `key` is the purchase id (or admin request id)."""
        return f"{self.namespace}.intents.{shard}.{KIND_TOKEN[kind]}.{key}"

    def intent_batch(self, shard: int, batch_id: str) -> str:
        """Subject of one packed batch of intents (`IntentBatch`); `batch_id` is unique per batch."""
        return f"{self.namespace}.intents.{shard}.{BATCH_TOKEN}.{batch_id}"

    def progress(self, shard: int) -> str:
        """Core NATS (not stored): how far the shard's writer has taken its intents."""
        return f"{self.namespace}.progress.{shard}"

    def progress_all(self) -> str:
        return f"{self.namespace}.progress.*"

    def results(self, shard: int) -> str:
        return f"{self.namespace}.results.{shard}"

    def results_all(self) -> str:
        return f"{self.namespace}.results.>"

    def payments(self, shard: int) -> str:
        return f"{self.namespace}.payments.{shard}"

    def payments_all(self) -> str:
        return f"{self.namespace}.payments.>"

    def deadletter(self) -> str:
        return f"{self.namespace}.deadletter"

    def committer_durable(self, shard: int) -> str:
        return f"committer-{shard}"
