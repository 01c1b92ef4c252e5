"""JetStream streams as data: what each stream holds and the limits that protect what it holds.

Pure: `flashsale.jetstream` turns these specs into server calls. Every process that starts
ensures them, so the definitions live here, beside the subjects they capture.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from proto.subjects import Names

Retention = Literal["limits", "workqueue"]
Discard = Literal["old", "new"]

# Intents in one packed batch (`IntentBatch`): a purchase intent encodes to ~200-400 bytes, so
# a full batch stays well below nats-server's default max_payload (1 MiB).
PACKED_BATCH_MAX = 1000

# JetStream's "store failed" error code. It covers both "maximum messages per subject exceeded"
# (the INTENTS stream holds one message per subject: this intent already exists) and "maximum
# bytes/messages exceeded" (the stream is full), so only the description tells them apart.
ERR_STORE_FAILED = 10077


def is_already_stored(err_code: int, description: str) -> bool:
    """A publish refused because its subject already holds its one message: the intent exists."""
    return err_code == ERR_STORE_FAILED and "per subject" in description


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    subjects: list[str]
    retention: Retention = "limits"
    discard: Discard = "old"
    discard_new_per_subject: bool = False
    max_msgs_per_subject: int = -1
    max_age_s: float = 0.0  # 0: no age limit
    max_bytes: int = -1
    duplicate_window_s: float = 0.0  # 0: the server's default
    allow_direct: bool = False
    replicas: int = 1
    # Acknowledged before it is fsynced (JetStream's `persist_mode: async`, R1 streams only; set
    # when the stream is created, never changed afterwards): for a stream whose every message
    # Postgres also holds, so a power failure loses nothing that cannot be read again there.
    persist_async: bool = False


class StreamLimits(msgspec.Struct, frozen=True, kw_only=True):
    intents_max_age_s: float
    intents_max_bytes: int
    results_max_age_s: float
    duplicate_window_s: float
    replicas: int = 1


def stream_specs(names: Names, limits: StreamLimits, shards: int) -> list[StreamSpec]:
    return [
        # Intents, one stream per shard: ingest's packed batches (a subject per batch) and the
        # intents sent alone (a subject per purchase id or admin request and kind, so the server
        # refuses a second copy of those). New messages are refused rather than old ones dropped
        # when full: nothing that got a 202 is ever lost.
        *(StreamSpec(
            name=names.intents_stream(shard),
            subjects=[names.intents_of_shard(shard)],
            discard="new",
            discard_new_per_subject=True,
            max_msgs_per_subject=1,
            max_age_s=limits.intents_max_age_s,
            max_bytes=limits.intents_max_bytes,
            duplicate_window_s=limits.duplicate_window_s,
            allow_direct=True,
            replicas=limits.replicas,
        ) for shard in range(shards)),
        # Results: a short-lived fan-out log of committed decisions for ingest long-polls. Postgres
        # holds every decision first: waiters fall back to it and reconciliation repairs a lost
        # refusal, so a result batch is not worth a disk flush of its own.
        StreamSpec(
            name=names.results_stream,
            subjects=[names.results_all()],
            max_age_s=limits.results_max_age_s,
            replicas=limits.replicas,
            persist_async=limits.replicas == 1,
        ),
        # Payments: reservations waiting to be charged; each consumed once by some gateway.
        StreamSpec(
            name=names.payments_stream,
            subjects=[names.payments_all()],
            retention="workqueue",
            duplicate_window_s=limits.duplicate_window_s,
            replicas=limits.replicas,
        ),
        StreamSpec(
            name=names.deadletter_stream,
            subjects=[names.deadletter()],
            replicas=limits.replicas,
        ),
    ]
