"""How every flashsale HTTP port answers an error: an RFC 9457 problem (`Problem`), never a
traceback and never an echo of what was sent.

- `problem_response` and `raw_answer`: a problem as aiohttp's response, or as the raw bytes the
  head guard writes itself before aiohttp parsed anything;
- `ProblemRequestHandler` is aiohttp's protocol with its error answers replaced: a request
  aiohttp refuses while parsing (CL with TE, a duplicate Content-Length, obs-fold, a bare LF,
  NUL, too many headers, raw UTF-8 in the target, no Host, ...) is a 400 problem+json that
  never echoes what was sent; a handler's unexpected exception a 500 problem;
- `problem_middleware`: aiohttp's own HTTP errors as problems, for the small apps;
- no answer carries aiohttp's `Server: Python/3.x aiohttp/3.y` banner: `Server: flashsale`.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

SERVER = "flashsale"
PROBLEM_BASE = "https://flashsale.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class FieldError(msgspec.Struct, frozen=True):
    path: str  # JSONPath of the offending value, "$" for the whole body
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    """An RFC 9457 problem: `type` is a stable URI per kind of problem, for clients to switch on."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None
    retry_after_s: int | None = None


encode_problem = msgspec.json.Encoder().encode


def problem_response(status: int, slug: str, title: str, detail: str) -> web.Response:
    body = encode_problem(Problem(type=PROBLEM_BASE + slug, title=title, status=status, detail=detail))
    return web.Response(status=status, body=body, content_type=PROBLEM_CONTENT_TYPE,
                        headers={"Server": SERVER})


def raw_answer(status: HTTPStatus, slug: str, title: str, detail: str) -> bytes:
    body = encode_problem(Problem(type=PROBLEM_BASE + slug, title=title, status=status, detail=detail))
    head = (f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            f"Content-Type: {PROBLEM_CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n"
            f"Server: {SERVER}\r\n\r\n")
    return head.encode() + body


class ProblemRequestHandler(RequestHandler):
    """aiohttp's protocol, answering what it cannot parse (and a handler's unexpected error)
    with a problem that says what kind of thing went wrong, never what was sent."""

    __slots__ = ("_elsewhere", "on_response_done")

    def __init__(self, manager: web.Server, **options: Any) -> None:
        super().__init__(manager, **options)
        self.on_response_done: Callable[[], None] | None = None
        self._elsewhere = False  # a request of this connection is being answered elsewhere

    def log_access(self, request: BaseRequest, response: web.StreamResponse, time: float | None) -> None:
        # aiohttp calls this once per request, when its answer has been written (or the
        # connection broke): the one place that says a request is over.
        super().log_access(request, response, time)
        if self.on_response_done is not None:
            self.on_response_done()

    # A request of this connection answered by someone else (ingest's lean path), with aiohttp
    # idle in between: aiohttp's own idle deadline must not close the connection under it, and
    # starts again once it is answered, as after aiohttp's own answers. These read and set
    # RequestHandler's keep-alive state, which aiohttp keeps in slots of its own.

    def idle(self) -> bool:
        """No request in aiohttp's hands, nor parsed and queued, and the connection stays open:
        aiohttp waits for the next request (or is about to)."""
        return (not self._messages and not self._request_in_progress and not self._close
                and not self._force_close and not self._upgraded and self._payload_parser is None)

    def answering_elsewhere(self) -> None:
        self._elsewhere = True

    def answered_elsewhere(self) -> None:
        self._elsewhere = False
        if self._keepalive_timeout <= 0 or self._force_close:
            return
        # As aiohttp after its own answers: the deadline moves, its timer stays (and is
        # set again when it fires early).
        close_time = self._loop.time() + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None:
            self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)

    def _process_keepalive(self) -> None:
        if self._elsewhere:  # not idle: look again a deadline later
            later = self._loop.time() + self._keepalive_timeout
            self._keepalive_handle = self._loop.call_at(later, self._process_keepalive)
            return
        super()._process_keepalive()

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # Logged as aiohttp logs it (a filter on its logger may count and thin these lines).
        if status < 500 and isinstance(exc, BadHttpMethod):
            self.logger.debug("Error handling request from %s", request.remote, exc_info=exc)
        else:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has begun: no other answer can be sent")
        if status >= 500:
            resp = problem_response(status, "internal", "Internal error",
                                    "unexpected error; it has been logged")
        else:
            resp = problem_response(status, "bad_request", "Bad request",
                                    "the request is not valid HTTP/1.1 (RFC 9112)")
        resp.force_close()
        return resp


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own HTTP errors (router 404 and 405, 413) as problems, for the small apps that
    have no error handling of their own."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug = HTTPStatus(exc.status).phrase.lower().replace(" ", "_").replace("-", "_")
        resp = problem_response(exc.status, slug, exc.reason, exc.reason)
        if "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
