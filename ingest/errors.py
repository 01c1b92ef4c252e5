"""Ingest's own exception types, in one home.

`problems.Rejection` (a 4xx or 5xx problem answered as raised) lives with the problem format it
renders, and `config.errors.ConfigError` (settings that cannot work) with the settings; these
are the failures that are not about the request itself.
"""

from __future__ import annotations

from typing import Literal

OverloadCause = Literal[
    "nats_disconnected",  # NATS is down or reconnecting: nothing can be stored
    "nats_backlog",  # nats-py's outgoing buffer is near its blocking limit
    "inflight_max",  # inflight_max publishes already await their ack
    "no_stream",  # no stream holds the subject (JetStream's empty no-responders reply)
    "stream_full",  # the stream refused the message for its limits
    "jetstream_refused",  # any other JetStream error answer
    "publish_timeout",  # no answer from JetStream within PUBLISH_TIMEOUT_S
    "publish_failed",  # the packed batch could not be sent
    "shutting_down",  # the process is stopping
    "intent_missing",  # a twin's first copy failed: the client retries
    "shard_unavailable",  # the shard's writer has been silent too long
    "waiters_max",  # the process holds waiters_max waits: an admin change cannot wait
    "intents_follower_behind",  # the follower of a shard's intents cannot catch up
]


class Overloaded(Exception):
    """The intent could not be stored right now (or not known to be): answer 503 + Retry-After.
    The client retries with the same Idempotency-Key, which is safe either way."""

    def __init__(self, cause: OverloadCause) -> None:
        super().__init__(cause)
        self.cause: OverloadCause = cause

