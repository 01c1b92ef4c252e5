"""Publishing intents to JetStream, with the in-flight bound that turns overload into a fast 503.

Every caller awaits its own PubAck: a 202 is only ever sent for an intent JetStream has stored.
"""

from __future__ import annotations

import logging

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

log = logging.getLogger("ingest.publisher")

# JetStream's "store failed" error code. It covers both "maximum messages per subject exceeded"
# (the INTENTS stream holds one message per subject: this intent already exists) and "maximum
# bytes/messages exceeded" (the stream is full), so only the description tells them apart.
ERR_STORE_FAILED = 10077
# A publish that got no ack in this long may or may not be stored; the client retries with the
# same Idempotency-Key, which is safe either way.
PUBLISH_TIMEOUT_S = 5.0


class Overloaded(Exception):
    """The intent could not be stored right now; answer 503 + Retry-After."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class Publisher:
    def __init__(self, nc: NATS, js: JetStreamContext, inflight_max: int) -> None:
        self.nc = nc
        self.js = js
        self.inflight_max = inflight_max
        self.inflight = 0  # read by the metrics gauge at scrape time

    def check_capacity(self) -> None:
        if not self.nc.is_connected:
            raise Overloaded("nats_disconnected")
        if self.inflight >= self.inflight_max:
            raise Overloaded("inflight_max")

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> bool:
        """Store one intent. True: stored now. False: that subject already holds an intent (a
        retry, or a concurrent request for the same key). Raises Overloaded."""
        self.check_capacity()
        self.inflight += 1
        try:
            ack = await self.js.publish(
                subject, payload, timeout=PUBLISH_TIMEOUT_S, headers={"Nats-Msg-Id": msg_id}
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code == ERR_STORE_FAILED and "per subject" in (exc.description or ""):
                return False
            if exc.err_code == ERR_STORE_FAILED:
                log.warning("publish refused on %s: %s", subject, exc)
                raise Overloaded("stream_full") from exc
            # Stream full (discard new), insufficient resources, no leader: nothing was stored.
            log.warning("publish refused on %s: %s", subject, exc)
            raise Overloaded("jetstream_refused") from exc
        except nats.js.errors.NoStreamResponseError as exc:
            raise Overloaded("no_stream") from exc
        except nats.errors.TimeoutError as exc:
            raise Overloaded("publish_timeout") from exc
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                nats.errors.OutboundBufferLimitError, nats.errors.StaleConnectionError) as exc:
            raise Overloaded("nats_disconnected") from exc
        finally:
            self.inflight -= 1
        return not ack.duplicate
