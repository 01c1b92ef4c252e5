"""The Python load generator: one process, raw asyncio streams over keep-alive connections.

`python -m bench.loadgen SPEC_JSON OUT_PATH` runs one phase and writes a msgpack `GenResult` to
OUT_PATH; it prints one JSON progress line per second on stdout for the harness's live line.
The harness runs several of these side by side (one per core is the useful maximum) because one
Python process cannot saturate an HTTP server on its own.

Modes:
- open:   fixed arrival rate; each request's latency counts from its *intended* send time, so a
          stalled server cannot hide its stall by slowing the generator (no coordinated omission).
- closed: N connections, each sends its next request as soon as the last one is answered.
- retry:  closed loop of buyers that give up after a short timeout and retry with the same
          Idempotency-Key on a fresh connection (the retry storm).

Why not aiohttp's client: its per-request overhead is several times that of a pre-encoded
request written to a stream, and the generator must not be the bottleneck.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
import sys
import time
from pathlib import Path

import msgspec
import uvloop

from bench.buyers import read_tokens
from bench.genspec import GenResult, GenSpec
from bench.httpconn import Answer, HttpConn, decode_answer
from bench.stats import arrival_offset

# uvloop's loop.time() has millisecond resolution: latencies need the perf counter.
now = time.perf_counter

ACCEPTED = (200, 201, 202)
# flashsale's sold-out fast path answers 409 without creating a purchase: a definitive answer
# (the buyer is told "rejected: sold out"), so it counts as answered and decided, not accepted.
SOLD_OUT = 409
DECIDED = frozenset({"reserved", "confirmed", "rejected", "expired", "cancelled"})


STREAMS_MAX = 200  # event streams followed at once per generator process


class Generator:
    def __init__(self, spec: GenSpec) -> None:
        self.spec = spec
        self.result = GenResult()
        self.window: list[float] = []  # latencies of the current second, for the progress line
        self.window_errors = 0
        self.t0 = 0.0
        host = f"{spec.host}:{spec.port}".encode()
        self._head = (
            b"POST /v1/purchases HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\n"
        )
        self._prefer = b"Prefer: wait=%d\r\n" % spec.wait_s
        self._skus = [s.encode() for s in spec.skus]
        self._tokens = [b',"payment_token":"%s"' % t.encode() for t in spec.payment_tokens]
        buyers = read_tokens(Path(spec.tokens_file)) if spec.tokens_file else []
        self._auth = [b"Authorization: Bearer %s\r\n" % t.encode() for t in buyers] or [b""]
        self._followers: set[asyncio.Task[None]] = set()

    def build(self, n: int, wait: bool) -> bytes:
        """Request n: the buyer of token line n (or n mod the lines, see GenSpec.repeat_buyers),
        who is the token's subject (no user_id in the body); the SKU cycles through the list."""
        buyer = n % len(self._auth)
        key = n if self.spec.repeat_buyers else buyer
        if not self.spec.repeat_buyers and n >= len(self._auth):
            self.result.clicks_repeated += 1
        token = self._tokens[n % len(self._tokens)] if self._tokens else b""
        sku = self._skus[n % len(self._skus)]
        body = b'{"sku":"%s","qty":1%s}' % (sku, token)
        return b"%s%sIdempotency-Key: k%d\r\n%sContent-Length: %d\r\n\r\n%s" % (
            self._head, self._auth[buyer], key, self._prefer if wait else b"", len(body), body,
        )

    def _count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1

    def _record(self, status: int, body: bytes, latency_ms: float, wait: bool) -> Answer | None:
        r = self.result
        self._count(r.statuses, str(status))
        self.window.append(latency_ms)
        if status not in ACCEPTED and status != SOLD_OUT:
            self.window_errors += 1
            return None
        r.answered += 1
        second = int(now() - self.t0)
        if second >= 0:
            while len(r.per_second) <= second:
                r.per_second.append(0)
            r.per_second[second] += 1
        if status == SOLD_OUT:
            if not wait:
                r.accept_ms.append(latency_ms)
            r.decision_ms.append(latency_ms)
            return Answer(status="rejected")
        answer = decode_answer(body) if body else Answer()
        if answer.id:
            r.accepted_ids.append(answer.id)
        if not wait:
            r.accept_ms.append(latency_ms)
        if answer.status in DECIDED:
            r.decision_ms.append(latency_ms)
        elif wait:
            r.undecided += 1
        return answer

    def _error(self, kind: str) -> None:
        self._count(self.result.errors, kind)
        self.window_errors += 1

    async def _send(self, conn: HttpConn, data: bytes, timeout_s: float) -> tuple[int, bytes] | None:
        try:
            async with asyncio.timeout(timeout_s):
                return await conn.request(data)
        except TimeoutError:
            conn.close()
            self._error("timeout")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            conn.close()
            self._error(type(e).__name__)
        return None

    def _maybe_follow(self, n: int, wait: bool, answer: Answer | None, sent_at: float) -> None:
        spec = self.spec
        if wait or not spec.stream_every or n % spec.stream_every != spec.stream_every // 2:
            return
        if answer is None or not answer.id:
            return
        if answer.status in DECIDED:
            self.result.stream_decision_ms.append((now() - sent_at) * 1000)
            return
        if len(self._followers) < STREAMS_MAX:
            task = asyncio.create_task(self._follow(answer.id, self._auth[n % len(self._auth)], sent_at))
            self._followers.add(task)
            task.add_done_callback(self._followers.discard)

    async def _follow(self, pid: str, auth: bytes, sent_at: float) -> None:
        """Read the purchase's event stream until an event carries a decided state."""
        spec = self.spec
        request = (b"GET /v1/purchases/%s/events HTTP/1.1\r\nHost: %s:%d\r\n%sAccept: text/event-stream"
                   b"\r\n\r\n" % (pid.encode(), spec.host.encode(), spec.port, auth))
        try:
            async with asyncio.timeout(spec.timeout_s):
                reader, writer = await asyncio.open_connection(spec.host, spec.port)
                try:
                    writer.write(request)
                    while line := await reader.readline():
                        if line.startswith(b"data:"):
                            answer = decode_answer(line[5:].strip())
                            if answer.status in DECIDED:
                                self.result.stream_decision_ms.append((now() - sent_at) * 1000)
                                return
                finally:
                    writer.close()
        except (TimeoutError, OSError, msgspec.DecodeError):
            self._error("stream")

    async def open_worker(self, counter: itertools.count[int], conn: HttpConn) -> None:
        spec = self.spec
        end = self.t0 + spec.duration_s
        while True:
            n = next(counter)
            due = self.t0 + arrival_offset(n, spec.rate)
            if due >= end:
                break
            delay = due - now()
            if delay > 0:
                await asyncio.sleep(delay)
            self.result.lag_ms.append((now() - due) * 1000)
            wait = spec.wait_every > 0 and n % spec.wait_every == 0
            self.result.sent += 1
            got = await self._send(conn, self.build(n, wait), spec.timeout_s)
            if got is not None:
                answer = self._record(got[0], got[1], (now() - due) * 1000, wait)
                self._maybe_follow(n, wait, answer, due)
        conn.close()

    async def closed_worker(self, counter: itertools.count[int], conn: HttpConn) -> None:
        spec = self.spec
        end = self.t0 + spec.duration_s
        while now() < end:
            n = next(counter)
            wait = spec.wait_every > 0 and n % spec.wait_every == 0
            self.result.sent += 1
            start = now()
            got = await self._send(conn, self.build(n, wait), spec.timeout_s)
            if got is not None:
                self._record(got[0], got[1], (now() - start) * 1000, wait)
        conn.close()

    async def retry_worker(self, counter: itertools.count[int], conn: HttpConn) -> None:
        """Each logical purchase: send with a short timeout; on timeout, 429 or 503, resend the
        very same request (same user, same key) on a fresh connection, up to retry_attempts."""
        spec, r = self.spec, self.result
        end = self.t0 + spec.duration_s
        while now() < end:
            n = next(counter)
            data = self.build(n, True)
            r.logical += 1
            first = now()
            ids: set[str] = set()
            done = False
            for attempt in range(spec.retry_attempts):
                if attempt:
                    r.retries += 1
                r.sent += 1
                got = await self._send(conn, data, spec.retry_timeout_s)
                if got is None:
                    continue
                answer = self._record(got[0], got[1], (now() - first) * 1000, True)
                if answer is None:
                    await asyncio.sleep(0.01)  # overload answer: back off a little, then retry
                    continue
                if answer.id:
                    ids.add(answer.id)
                done = True
                break
            if done and spec.resend_every and n % spec.resend_every == 0:
                # A buyer whose app lost the answer: the same request again must land on the
                # same purchase (same id), never a second one.
                r.retries += 1
                r.sent += 1
                got = await self._send(conn, data, spec.timeout_s)
                if got is not None:
                    answer = self._record(got[0], got[1], (now() - first) * 1000, True)
                    if answer is not None and answer.id:
                        ids.add(answer.id)
            if not done:
                r.gave_up += 1
            if len(ids) > 1:
                r.id_mismatch += 1
        conn.close()

    async def progress(self) -> None:
        """One JSON line per second: answers, errors and p99 of the last second."""
        last_sent = 0
        while True:
            await asyncio.sleep(1.0)
            w = sorted(self.window)
            p99 = w[max(0, int(len(w) * 0.99) - 1)] if w else None
            line = {"n": len(w), "sent": self.result.sent - last_sent, "err": self.window_errors, "p99": p99}
            last_sent = self.result.sent
            self.window, self.window_errors = [], 0
            print(json.dumps(line), flush=True)

    async def run(self) -> GenResult:
        spec = self.spec
        counter = itertools.count()
        if spec.mode == "open":
            # Enough connections for the rate at up to ~0.5 s latency, within the bound: past
            # that requests go out late, and their latency still counts from the intended time.
            workers = max(8, min(spec.concurrency, int(spec.rate * 0.5) + 8))
            job = self.open_worker
        else:
            workers = spec.concurrency
            job = self.closed_worker if spec.mode == "closed" else self.retry_worker
        conns = [HttpConn(spec.host, spec.port) for _ in range(workers)]
        # Connect before the clock starts, 32 at a time: a burst of thousands of SYNs would
        # overflow the server's listen backlog and measure the kernel's SYN retry timer instead.
        sem = asyncio.Semaphore(32)

        async def connect(c: HttpConn) -> None:
            async with sem:
                try:
                    await c.connect()
                except OSError:
                    pass  # the worker reconnects on first use and counts the error then

        await asyncio.gather(*(connect(c) for c in conns))
        self.t0 = now() + max(0.0, spec.start_at - time.time())
        await asyncio.sleep(max(0.0, self.t0 - now()))
        ticker = asyncio.create_task(self.progress())
        await asyncio.gather(*(job(counter, c) for c in conns))
        if self._followers:  # the last streams still on their way to a decision
            await asyncio.wait(set(self._followers), timeout=spec.timeout_s)
        ticker.cancel()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.result.cpu_s = usage.ru_utime + usage.ru_stime
        self.result.wall_s = now() - self.t0
        return self.result


def main() -> None:
    spec = msgspec.json.decode(sys.argv[1].encode(), type=GenSpec)
    uvloop.install()
    result = asyncio.run(Generator(spec).run())
    Path(sys.argv[2]).write_bytes(msgspec.msgpack.encode(result))


if __name__ == "__main__":
    main()
