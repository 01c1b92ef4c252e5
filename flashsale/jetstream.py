"""Connecting to NATS and ensuring the JetStream streams of `proto.streams` exist."""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from config.settings import Settings
from proto.streams import StreamLimits, StreamSpec, stream_specs

_RETENTION = {"limits": RetentionPolicy.LIMITS, "workqueue": RetentionPolicy.WORK_QUEUE}
_DISCARD = {"old": DiscardPolicy.OLD, "new": DiscardPolicy.NEW}


def stream_limits(settings: Settings) -> StreamLimits:
    return StreamLimits(
        intents_max_age_s=settings.intents_max_age_s,
        intents_max_bytes=settings.intents_max_bytes,
        results_max_age_s=settings.results_max_age_s,
        duplicate_window_s=settings.duplicate_window_s,
    )


def stream_config(spec: StreamSpec) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=_RETENTION[spec.retention],
        storage=StorageType.FILE,
        discard=_DISCARD[spec.discard],
        discard_new_per_subject=spec.discard_new_per_subject,
        max_msgs_per_subject=spec.max_msgs_per_subject,
        max_age=spec.max_age_s or None,
        max_bytes=spec.max_bytes if spec.max_bytes >= 0 else None,
        duplicate_window=spec.duplicate_window_s,
        allow_direct=spec.allow_direct or None,
        num_replicas=spec.replicas,
    )


def stream_configs(settings: Settings) -> list[StreamConfig]:
    return [stream_config(s) for s in stream_specs(settings.names, stream_limits(settings))]


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    for config in stream_configs(settings):
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # Exists with another config (an older version, or changed limits): update it.
            await js.update_stream(config)
