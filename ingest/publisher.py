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

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from proto.streams import (
    ERR_ATOMIC_DISABLED,
    ERR_BATCH_DUPLICATE_MSG_ID,
    ERR_STORE_FAILED,
    is_already_stored,
)

# Every wait on JetStream (a publish's ack, a direct get) ends within this (plus one sweep):
# a paused or unreachable server is a 503 + Retry-After, never a hang. A publish that got no ack
# in this long may or may not be stored; the client retries with the same Idempotency-Key, which
# is safe either way.
PUBLISH_TIMEOUT_S = 5.0
SWEEP_EVERY_S = 0.25
# nats-py blocks a publish, with no timeout, once its outgoing buffer holds `pending_size` (2 MiB
# by default): what a server that stopped reading (paused, or a dead peer not detected yet) leads
# to. Below that, a publish is refused instead (503), so no request ever waits on that buffer.
NATS_BUFFER_MAX_BYTES = 1 << 20


class Overloaded(Exception):
    """The intent could not be stored right now; answer 503 + Retry-After."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class _AckError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _AckError | None = None


_ack_decoder = msgspec.json.Decoder(_PubAck)
_NO_RESPONDERS = b""  # JetStream answers an unknown subject with an empty "503" status message


def ack_stored_now(data: bytes) -> int:
    """Parse a JetStream PubAck: the stream sequence of the message stored now, or 0 when its
    subject already holds its one message (a retry, or a concurrent request for the same key).
    Raises Overloaded when nothing was stored (no stream, stream full, no leader...)."""
    if data == _NO_RESPONDERS:
        raise Overloaded("no_stream")
    ack = _ack_decoder.decode(data)
    if ack.error is None:
        return 0 if ack.duplicate else ack.seq
    err = ack.error
    if is_already_stored(err.err_code, err.description):
        return 0
    raise Overloaded("stream_full" if err.err_code == ERR_STORE_FAILED else "jetstream_refused")


class DuplicateInBatch(Exception):
    """An atomic batch was refused because one of its subjects already holds its one message
    (a retry among new intents): nothing of the batch was stored, and which one is not said."""


class AtomicUnsupported(Exception):
    """The stream does not take atomic batches (not enabled, or a server before 2.12)."""


def batch_stored(data: bytes) -> int:
    """Parse the PubAck of an atomic batch's commit: the stream sequence of the batch's last
    message (the batch holds the sequences just before it, in order)."""
    if data == _NO_RESPONDERS:
        raise Overloaded("no_stream")
    ack = _ack_decoder.decode(data)
    if ack.error is None:
        return ack.seq
    if ack.error.err_code == ERR_ATOMIC_DISABLED:
        raise AtomicUnsupported(ack.error.description)
    if is_already_stored(ack.error.err_code, ack.error.description) or (
        ack.error.err_code == ERR_BATCH_DUPLICATE_MSG_ID
    ):
        raise DuplicateInBatch()
    raise Overloaded("stream_full" if ack.error.err_code == ERR_STORE_FAILED else "jetstream_refused")


def direct_get_payload(data: bytes, status: str | None) -> bytes | None:
    """Parse a JetStream direct-get reply: the message's payload, or None when there is none."""
    if data:
        return data
    if status == "404":
        return None
    raise Overloaded("jetstream_refused" if status else "no_stream")


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

    def fail_all(self, cause: str) -> None:
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
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                nats.errors.OutboundBufferLimitError, nats.errors.StaleConnectionError) as exc:
            self._pending.discard(reply)
            raise Overloaded("nats_disconnected") from exc
        except BaseException:
            self._pending.discard(reply)
            raise
        return await fut

    async def last_message(self, stream: str, subject: str) -> tuple[bytes, int] | None:
        """The payload and stream sequence of the last message on `subject` (JetStream direct
        get), or None.

        The sold-out fast path asks this for every request, so it shares the reply
        subscription instead of nats-py's per-request inbox, JSON body and timer."""
        msg = await self._request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", None)
        headers = msg.headers or {}
        payload = direct_get_payload(msg.data, headers.get("Status"))
        if payload is None:
            return None
        return payload, int(headers.get("Nats-Sequence", "0") or 0)

    async def publish_batch(self, items: list[tuple[str, bytes, str]]) -> int:
        """Store (subject, payload, msg id) items as one atomic batch: all or nothing, one disk
        flush for all; the stream sequence of the last one. Raises DuplicateInBatch or
        Overloaded (then nothing is stored)."""
        batch_id = f"{self._prefix[len('_INBOX.'):-1]}-{next(self._counter)}"
        self.check_capacity()  # the batch's first messages go out before its request does
        try:
            for seq, (subject, payload, msg_id) in enumerate(items[:-1], 1):
                await self.nc.publish(subject, payload, headers={
                    "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(seq), "Nats-Msg-Id": msg_id,
                })
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                nats.errors.OutboundBufferLimitError, nats.errors.StaleConnectionError) as exc:
            raise Overloaded("nats_disconnected") from exc
        subject, payload, msg_id = items[-1]
        commit = await self._request(subject, payload, {
            "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(len(items)), "Nats-Msg-Id": msg_id,
            "Nats-Batch-Commit": "1",
        })
        return batch_stored(commit.data)

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
