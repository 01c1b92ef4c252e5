"""Pulling from a durable JetStream consumer: low latency when idle, large batches under load.

nats-py's `fetch(n)` waits for n messages (or its timeout) once it has to linger, which would
hold a lone message for the whole timeout. Here one pull request for up to `batch_max` messages
stays open; each call returns as soon as anything is there, and the server keeps filling our
inbox while the previous batch commits, so the next call finds a batch waiting.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque

from nats.aio.client import Client
from nats.aio.msg import Msg

STATUS = "Status"
HEARTBEAT = "100"
REQUEST_ENDED = {"404", "408", "409"}  # no messages / expired / conflict (e.g. max waiting)


class Puller:
    def __init__(self, nc: Client, stream: str, durable: str, request_expires_s: float = 5.0,
                 api_prefix: str = "$JS.API") -> None:
        self.nc = nc
        self.next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.request_expires_s = request_expires_s
        self.credit = 0  # messages the open pull request may still deliver
        self.request_deadline = 0.0
        self.inbox = nc.new_inbox()
        self.sub = None
        # Never more than one request's worth (batch_max) plus status messages.
        self._queue: deque[Msg] = deque()
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(self.inbox, cb=self._on_msg)

    async def _on_msg(self, msg: Msg) -> None:
        self._queue.append(msg)
        self._arrived.set()

    async def fetch(self, batch_max: int, timeout_s: float) -> list[Msg]:
        msgs = self._drain(batch_max)
        await self._ensure_request(batch_max)
        deadline = time.monotonic() + timeout_s
        while not msgs:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(remaining, self.request_expires_s))
            except TimeoutError:
                pass
            msgs = self._drain(batch_max)
            await self._ensure_request(batch_max)
        return msgs

    def _take(self, msg: Msg) -> bool:
        """True for a message; status messages update the request's state and are dropped."""
        status = msg.headers.get(STATUS) if msg.headers else None
        if status is None:
            self.credit -= 1
            return True
        if status in REQUEST_ENDED or not status.startswith("1"):
            self.credit = 0
        return False

    def _drain(self, limit: int) -> list[Msg]:
        out: list[Msg] = []
        queue = self._queue
        while queue and len(out) < limit:
            msg = queue.popleft()
            if self._take(msg):
                out.append(msg)
        return out

    async def _ensure_request(self, batch_max: int) -> None:
        if self.credit > 0 and time.monotonic() < self.request_deadline:
            return
        self.credit = batch_max
        self.request_deadline = time.monotonic() + self.request_expires_s
        request = {"batch": batch_max, "expires": int(self.request_expires_s * 1e9)}
        await self.nc.publish(self.next_subject, json.dumps(request).encode(), reply=self.inbox)

    async def close(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()
