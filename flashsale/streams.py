"""JetStream stream definitions, created idempotently by every process that starts."""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from config.settings import Settings


def stream_configs(settings: Settings) -> list[StreamConfig]:
    names = settings.names
    return [
        # Intents: one message per subject (= per purchase id and kind), and new messages are
        # refused rather than old ones dropped when full: nothing that got a 202 is ever lost,
        # and a second copy of a purchase is refused by the server itself, forever.
        StreamConfig(
            name=names.intents_stream,
            subjects=[names.intents_all()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            discard_new_per_subject=True,
            max_msgs_per_subject=1,
            max_age=settings.intents_max_age_s,
            max_bytes=settings.intents_max_bytes,
            duplicate_window=settings.duplicate_window_s,
            allow_direct=True,
        ),
        # Results: a short-lived fan-out log of committed decisions for ingest long-polls.
        StreamConfig(
            name=names.results_stream,
            subjects=[names.results_all()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=settings.results_max_age_s,
        ),
        # Payments: reservations waiting to be charged; each consumed once by some gateway.
        StreamConfig(
            name=names.payments_stream,
            subjects=[names.payments_all()],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=settings.duplicate_window_s,
        ),
        StreamConfig(
            name=names.deadletter_stream,
            subjects=[names.deadletter()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
        ),
    ]


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    for config in stream_configs(settings):
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # Exists with another config (an older version, or changed limits): update it.
            await js.update_stream(config)
