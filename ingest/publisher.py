"""Publishing intents to JetStream, with the in-flight bound that turns overload into a fast 503.

Every caller awaits its own PubAck: a 202 is only ever sent for an intent JetStream has stored.

Not `js.publish`: it costs ~18 us of CPU per message in nats-py (a random token, three string
decodes, a wait_for timer, a dataclass PubAck). Here one wildcard reply subscription, a counter
for reply subjects, one future per publish, a sweeper for timeouts and a msgspec-decoded ack
cost ~8 us, which is most of ingest's budget per request.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ingest.errors import OverloadCause, Overloaded
from proto.streams import ERR_STORE_FAILED, is_already_stored

# Every wait on JetStream (a publish's ack, a stream info) ends within this (plus one sweep):
# a paused or unreachable server is a 503 + Retry-After, never a hang. A publish that got no ack
# in this long may or may not be stored; the client retries with the same Idempotency-Key, which
# is safe either way.
PUBLISH_TIMEOUT_S = 5.0
SWEEP_EVERY_S = 0.25
# nats-py blocks a publish, with no timeout, once its outgoing buffer holds `pending_size` (2 MiB
# by default): what a server that stopped reading (paused, or a dead peer not detected yet) leads
# to. Below that, a publish is refused instead (503), so no request ever waits on that buffer.
NATS_BUFFER_MAX_BYTES = 1 << 20


class _AckError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _AckError | None = None


_NO_RESPONDERS = b""  # JetStream answers an unknown subject with an empty "503" status message
# What nats-py raises from a publish when the connection cannot take it: nothing was sent.
NATS_UNAVAILABLE = (
    nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError, nats.errors.StaleConnectionError,
)


class _StreamState(msgspec.Struct):
    last_seq: int = 0


class _StreamInfo(msgspec.Struct):
    state: _StreamState | None = None
    error: _AckError | None = None


_Reply = TypeVar("_Reply", _PubAck, _StreamInfo)
_ack_decoder = msgspec.json.Decoder(_PubAck)
_info_decoder = msgspec.json.Decoder(_StreamInfo)


def _decode_reply(data: bytes, decoder: msgspec.json.Decoder[_Reply]) -> _Reply:
    """A JetStream API reply; Overloaded when no stream answered at all."""
    if data == _NO_RESPONDERS:
        raise Overloaded("no_stream")
    return decoder.decode(data)


def ack_stored_now(data: bytes) -> int:
    """Parse a JetStream PubAck: the stream sequence of the message stored now, or 0 when its
    subject already holds its one message (a retry, or a concurrent request for the same key).
    Raises Overloaded when nothing was stored (no stream, stream full, no leader...)."""
    ack = _decode_reply(data, _ack_decoder)
    if ack.error is None:
        return 0 if ack.duplicate else ack.seq
    err = ack.error
    if is_already_stored(err.err_code, err.description):
        return 0
    raise Overloaded("stream_full" if err.err_code == ERR_STORE_FAILED else "jetstream_refused")


def stream_last_seq(data: bytes) -> int:
    """Parse a JetStream stream info reply: the stream's last sequence. Raises Overloaded."""
    info = _decode_reply(data, _info_decoder)
    if info.error is not None or info.state is None:
        raise Overloaded("jetstream_refused")
    return info.state.last_seq


class PendingReplies:
    """Futures of requests awaiting their reply, by reply subject, oldest first. Pure."""

    def __init__(self) -> None:
        # reply subject -> (future, deadline); insertion order is deadline order (one timeout).
        self._pending: dict[str, tuple[asyncio.Future[Msg], float]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, reply: str, fut: asyncio.Future[Msg], deadline: float) -> None:
        self._pending[reply] = (fut, deadline)

    def discard(self, reply: str) -> None:
        self._pending.pop(reply, None)

    async def on_reply(self, msg: Msg) -> None:
        entry = self._pending.pop(msg.subject, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(msg)

    def expire(self, now: float) -> int:
        """Fail every request whose deadline passed; how many were failed."""
        expired = []
        for reply, (_, deadline) in self._pending.items():
            if deadline > now:
                break
            expired.append(reply)
        for reply in expired:
            fut, _ = self._pending.pop(reply)
            if not fut.done():
                fut.set_exception(Overloaded("publish_timeout"))
        return len(expired)

    def fail_all(self, cause: OverloadCause) -> None:
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(Overloaded(cause))
                # At shutdown nobody may await it any more: that is not an error to report.
                fut.add_done_callback(_retrieve)
        self._pending.clear()


def _retrieve(fut: asyncio.Future[Msg]) -> None:
    fut.exception()


class Publisher:
    def __init__(self, nc: NATS, inflight_max: int, prefix: str, pending: PendingReplies,
                 sweeper: asyncio.Task[None]) -> None:
        self.nc = nc
        self.inflight_max = inflight_max
        self._prefix = prefix
        self._counter = itertools.count()
        self._pending = pending
        self._sweeper = sweeper

    @classmethod
    async def start(cls, nc: NATS, inflight_max: int) -> Publisher:
        prefix = nc.new_inbox() + "."
        pending = PendingReplies()
        await nc.subscribe(prefix + "*", cb=pending.on_reply)
        return cls(nc, inflight_max, prefix, pending, asyncio.create_task(_sweep(pending)))

    @property
    def inflight(self) -> int:
        return len(self._pending)

    async def stop(self) -> None:
        self._sweeper.cancel()
        self._pending.fail_all("shutting_down")

    def check_capacity(self) -> None:
        if not self.nc.is_connected:
            raise Overloaded("nats_disconnected")
        if len(self._pending) >= self.inflight_max:
            raise Overloaded("inflight_max")
        if self.nc.pending_data_size >= NATS_BUFFER_MAX_BYTES:
            raise Overloaded("nats_backlog")

    async def _request(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> Msg:
        """One request/reply over the shared reply subscription. Raises Overloaded."""
        self.check_capacity()
        reply = self._prefix + str(next(self._counter))
        fut: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._pending.add(reply, fut, time.monotonic() + PUBLISH_TIMEOUT_S)
        try:
            await self.nc.publish(subject, payload, reply=reply, headers=headers)
        except NATS_UNAVAILABLE as exc:
            self._pending.discard(reply)
            raise Overloaded("nats_disconnected") from exc
        except BaseException:
            self._pending.discard(reply)
            raise
        return await fut

    async def stream_last_seq(self, stream: str) -> int:
        """The sequence of the last message `stream` holds now (0: none). Raises Overloaded."""
        msg = await self._request(f"$JS.API.STREAM.INFO.{stream}", b"", None)
        return stream_last_seq(msg.data)

    def new_batch_id(self) -> str:
        """An id no other batch of any process has: this connection's inbox and a counter."""
        return f"{self._prefix[len('_INBOX.'):-1]}-{next(self._counter)}"

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> int:
        """Store one intent: its stream sequence, or 0 when that subject already holds an intent
        (a retry, or a concurrent request for the same key). Raises Overloaded."""
        data = (await self._request(subject, payload, {"Nats-Msg-Id": msg_id})).data
        return ack_stored_now(data)


async def _sweep(pending: PendingReplies) -> None:
    """Fail publishes whose ack is overdue: one timer for all, not one per publish."""
    while True:
        await asyncio.sleep(SWEEP_EVERY_S)
        pending.expire(time.monotonic())
