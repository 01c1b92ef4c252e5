"""Pulling from a durable JetStream consumer: low latency when idle, large batches under load.

nats-py's `fetch(n)` waits for n messages (or its timeout) once it has to linger, which would
hold a lone message for the whole timeout. Here one pull request for up to `batch_max` messages
stays open; each call returns as soon as anything is there, and the server keeps filling our
inbox while the previous batch commits, so the next call finds a batch waiting.

`PullRequest` is the pure part (what each arrival does to the open request); `Puller` does the
I/O around it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Mapping
from typing import Protocol, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

STATUS = "Status"
HEARTBEAT = "100"
REQUEST_ENDED = frozenset({"404", "408", "409"})  # no messages / expired / conflict (e.g. max waiting)


class Delivery(Protocol):
    """What the status logic reads of a delivered message (nats-py's Msg has it)."""

    @property
    def headers(self) -> Mapping[str, str] | None: ...


M = TypeVar("M", bound=Delivery)


class PullRequest:
    """Our one open pull request: how many messages it may still deliver and until when.
    Pure: no I/O, the clock is passed in."""

    def __init__(self, expires_s: float) -> None:
        self.expires_s = expires_s
        self.credit = 0  # messages the open request may still deliver
        self.deadline_s = 0.0  # monotonic; the server ends the request then

    def take(self, msg: Delivery) -> bool:
        """True for a message; status messages update the request's state and are dropped."""
        status = msg.headers.get(STATUS) if msg.headers else None
        if status is None:
            self.credit -= 1
            return True
        # A heartbeat (100) leaves the request open; an end (404/408/409) or any error closes it.
        if status in REQUEST_ENDED or not status.startswith("1"):
            self.credit = 0
        return False

    def drain(self, queue: deque[M], limit: int) -> list[M]:
        """Up to `limit` messages from the front of `queue`, status messages consumed on the way."""
        out: list[M] = []
        while queue and len(out) < limit:
            msg = queue.popleft()
            if self.take(msg):
                out.append(msg)
        return out

    def is_open(self, now_s: float) -> bool:
        return self.credit > 0 and now_s < self.deadline_s

    def renew(self, batch_max: int, now_s: float) -> bytes:
        """Counts a new request for `batch_max` as open; returns its body for the server."""
        self.credit = batch_max
        self.deadline_s = now_s + self.expires_s
        return json.dumps({"batch": batch_max, "expires": int(self.expires_s * 1e9)}).encode()


class _Arrivals:
    """The inbox's messages, in order. Never more than one request's worth (batch_max) plus
    status messages."""

    def __init__(self) -> None:
        self.queue: deque[Msg] = deque()
        self.event = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        self.queue.append(msg)
        self.event.set()


class Puller:
    def __init__(self, nc: Client, sub: Subscription, inbox: str, next_subject: str,
                 request: PullRequest, arrivals: _Arrivals) -> None:
        self.nc = nc
        self.sub = sub
        self.inbox = inbox
        self.next_subject = next_subject
        self.request = request
        self._arrivals = arrivals
        # Messages a caller fetched and handed back (`unread`): the next fetch returns them first.
        self._unread: deque[Msg] = deque()

    @classmethod
    async def open(cls, nc: Client, stream: str, durable: str, request_expires_s: float = 5.0,
                   api_prefix: str = "$JS.API") -> Puller:
        """Subscribes the inbox; the first fetch sends the first pull request."""
        inbox = nc.new_inbox()
        arrivals = _Arrivals()
        sub = await nc.subscribe(inbox, cb=arrivals.on_msg)
        return cls(nc, sub, inbox, f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}",
                   PullRequest(request_expires_s), arrivals)

    def unread(self, msgs: list[Msg]) -> None:
        """Hand fetched messages back, unacknowledged: the next fetch returns them first."""
        self._unread.extendleft(reversed(msgs))

    async def fetch(self, batch_max: int, timeout_s: float) -> list[Msg]:
        arrivals = self._arrivals
        unread = self._unread
        msgs = [unread.popleft() for _ in range(min(batch_max, len(unread)))]
        msgs += self.request.drain(arrivals.queue, batch_max - len(msgs))
        await self._ensure_request(batch_max)
        deadline = time.monotonic() + timeout_s
        while not msgs:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            arrivals.event.clear()
            try:
                # A timeout scope, not wait_for: no task per wait (one per batch of a writer).
                async with asyncio.timeout(min(remaining, self.request.expires_s)):
                    await arrivals.event.wait()
            except TimeoutError:
                pass
            msgs = self.request.drain(arrivals.queue, batch_max)
            await self._ensure_request(batch_max)
        return msgs

    async def _ensure_request(self, batch_max: int) -> None:
        now_s = time.monotonic()
        if self.request.is_open(now_s):
            return
        await self.nc.publish(self.next_subject, self.request.renew(batch_max, now_s), reply=self.inbox)

    async def close(self) -> None:
        await self.sub.unsubscribe()
