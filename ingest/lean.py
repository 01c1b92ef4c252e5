"""The lean path: `POST /v1/purchases` answered without aiohttp's request cycle.

aiohttp makes a parser message, a request, a task, a middleware chain, a response and its
writer for every request: more CPU than taking the purchase itself. A plain purchase request is
answered here instead, by the same steps (`create.create`) under the same admission (capacity,
the client's rate) and with the same answers, written as one pre-built head and body.

Plain is narrow on purpose (`parse`): exactly one whole request that arrived alone on an idle
connection, `POST /v1/purchases HTTP/1.1`, printable ASCII headers of token names, one Host,
one Content-Length equal to the body, a JSON Content-Type, no Transfer-Encoding,
Content-Encoding, Expect, Upgrade or Connection other than keep-alive. Anything else goes to
aiohttp as before, so every rule aiohttp enforces still applies to what this path does not take.
What the client sends while its answer is pending waits its turn (`ingest.edge.protocol`).
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import NamedTuple

from aiohttp import web

from flashsale.problem_json import SERVER
from ingest import metrics
from ingest.bodies import JSON
from ingest.create import Post, create
from ingest.edge.process import Edge
from ingest.edge.protocol import Answered
from ingest.failures import problem_response
from ingest.schemas import encode_json
from ingest.state import STATE

ROUTE = "/v1/purchases"
_REQUEST_LINE = b"POST /v1/purchases HTTP/1.1\r\n"
HEADERS_MAX = 64
# Header lines: a token, a colon, printable ASCII or tabs (no obs-fold, no bare CR or LF).
_FIELDS = re.compile(
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e]*\r\n){1," + str(HEADERS_MAX).encode() + rb"}")
_JSON_TYPES = frozenset({b"application/json", b"application/json; charset=utf-8",
                         b"application/json;charset=utf-8"})
# Headers that make a request not plain: aiohttp handles them.
_NOT_PLAIN = frozenset({b"transfer-encoding", b"content-encoding", b"expect", b"upgrade"})


class Plain(NamedTuple):
    """A plain purchase request: the headers the purchase reads, and its body."""

    authorization: list[str]
    idempotency_keys: list[str]
    prefer: str | None
    forwarded_for: list[str]
    body: bytes


def parse(data: bytes, body_max_bytes: int) -> Plain | None:
    """`data` as a plain purchase request (see the module's doc), or None."""
    if not data.startswith(_REQUEST_LINE):
        return None
    end = data.find(b"\r\n\r\n", len(_REQUEST_LINE) - 2)
    if end < len(_REQUEST_LINE) or not _FIELDS.fullmatch(data, len(_REQUEST_LINE), end + 2):
        return None
    body = data[end + 4:]
    authorization: list[str] = []
    keys: list[str] = []
    forwarded_for: list[str] = []
    prefer: str | None = None
    hosts = lengths = types = 0
    for line in data[len(_REQUEST_LINE):end].split(b"\r\n"):
        raw_name, _, raw_value = line.partition(b":")
        name = raw_name.lower()
        value = raw_value.strip(b" \t")
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            lengths += 1
            if not value.isdigit() or int(value) != len(body) or len(body) > body_max_bytes:
                return None
        elif name == b"content-type":
            types += 1
            if value.lower() not in _JSON_TYPES:
                return None
        elif name == b"authorization":
            authorization.append(value.decode())
        elif name == b"idempotency-key":
            keys.append(value.decode())
        elif name == b"prefer":
            prefer = value.decode() if prefer is None else prefer
        elif name == b"x-forwarded-for":
            forwarded_for.append(value.decode())
        elif name in _NOT_PLAIN or (name == b"connection" and value.lower() != b"keep-alive"):
            return None
    if hosts != 1 or lengths != 1 or types != 1:
        return None
    return Plain(authorization, keys, prefer, forwarded_for, body)


class Answer(NamedTuple):
    raw: bytes  # status line, headers and body, as written
    close: bool  # the connection closes after it


class LeanRoute:
    """The lean path of one ingest process: `take` a lone request's bytes, answer them in a task
    of their own, hand the answer to `done`. `drain` waits for the answers in flight when the
    process stops (aiohttp waits only for its own)."""

    def __init__(self, app: web.Application, edge: Edge) -> None:
        self._app = app
        self._edge = edge
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.answered = 0
        metrics.LEAN_REQUESTS.set_function(lambda: self.answered)

    def take(self, data: bytes, peer: str, done: Answered) -> asyncio.Task[None] | None:
        """The task answering `data`, or None when it is not plain (or the process stops)."""
        if self._stopping:
            return None
        plain = parse(data, self._edge.body_max_bytes)
        if plain is None:
            return None
        task = asyncio.get_running_loop().create_task(self._answer(plain, peer, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self, timeout_s: float) -> None:
        self._stopping = True
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout_s)

    async def _answer(self, plain: Plain, peer: str, done: Answered) -> None:
        # The admission middleware's steps (ingest.admission), in its order.
        started = time.perf_counter()
        svc = self._app[STATE]
        try:
            svc.batcher.check_capacity()
            client = self._edge.admit(peer, plain.forwarded_for)
            post = Post(plain.authorization, plain.idempotency_keys, plain.prefer, JSON, client,
                        plain.body)
            status, view, headers = await create(svc, post)
            answer = Answer(render(status, headers, JSON, encode_json(view)), False)
        except Exception as exc:  # each kind answered as its problem (ingest.failures)
            response = problem_response(exc, "POST", ROUTE, svc.settings.retry_after_s)
            status = response.status
            answer = rendered(response)
        metrics.answered(ROUTE, status, started)
        self.answered += 1
        done(*answer)


def rendered(response: web.Response) -> Answer:
    """An aiohttp response (a problem) as written bytes."""
    body = response.body
    assert isinstance(body, bytes), "problems are encoded bytes"
    headers = {k: v for k, v in response.headers.items() if k != "Content-Type"}
    close = headers.get("Connection", "").lower() == "close"
    return Answer(render(response.status, headers, response.content_type, body), close)


def render(status: int, headers: dict[str, str], content_type: str, body: bytes) -> bytes:
    if any("\r" in v or "\n" in v for v in headers.values()):
        # Header values are ours or checked against a grammar, never raw input: a line break
        # here is a defect, answered as one (a 500), never written.
        raise ValueError("a header value holds a line break")
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    varying = f"Content-Length: {len(body)}\r\nDate: {http_date()}\r\n{fields}\r\n"
    return b"".join((_constant_head(status, content_type), varying.encode(), body))


@functools.lru_cache(maxsize=64)
def _constant_head(status: int, content_type: str) -> bytes:
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"Content-Type: {content_type}\r\nServer: {SERVER}\r\n").encode()


def http_date() -> str:
    """The Date header's value (made once a second)."""
    return _http_date(int(time.time()))


@functools.lru_cache(maxsize=1)
def _http_date(now_s: int) -> str:
    return formatdate(now_s, usegmt=True)
