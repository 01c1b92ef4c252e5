"""The head guard in front of aiohttp's protocol on every flashsale HTTP port.

`HeadGuard` reads every request head on its way in, each request of a kept-alive connection,
not only the first. A head larger than `head_max_bytes` (a chunk size line or a trailer section
too) is a 431, a request line that is not `METHOD TARGET HTTP/1.x` (HTTP/0.9, say) a 400: the
guard answers itself, before aiohttp parses the request, and closes the connection. To find
where the next head starts it follows each body's framing (Content-Length, or chunked). It never
changes what aiohttp reads: where the two parsers would disagree, aiohttp refuses the request
and closes.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from http import HTTPStatus
from typing import Literal, cast

from flashsale.problem_json import ProblemRequestHandler, raw_answer

HEAD_END = b"\r\n\r\n"
# How long a refused connection's further bytes are read and dropped before it closes, and how
# long aiohttp drains a body it did not read (e.g. after a 408 or 413).
LINGER_S = 2.0
HEAD_MAX_BYTES_DEFAULT = 16_384
HTTP1_VERSIONS = (b" HTTP/1.1\r", b" HTTP/1.0\r")

Refusal = Literal["head_too_large", "bad_request_line"]


def guard_answers(head_max_bytes: int) -> dict[Refusal, bytes]:
    return {
        "head_too_large": raw_answer(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large",
            "Request header fields too large",
            f"the request line and headers exceed {head_max_bytes} bytes"),
        "bad_request_line": raw_answer(
            HTTPStatus.BAD_REQUEST, "bad_request", "Bad request",
            "a request line is METHOD TARGET HTTP/1.1 (or HTTP/1.0), ended by CRLF"),
    }


Part = Literal["head", "body", "chunk_size", "chunk_data", "trailers"]


def chunk_size(line: bytes) -> int:
    """The size a chunk's size line says (extensions ignored); a malformed one counts as 0:
    aiohttp refuses that body itself, and closes the connection."""
    digits = line.partition(b";")[0].strip()
    try:
        return int(digits, 16) if digits.isalnum() else 0
    except ValueError:
        return 0


def body_length(head: bytes) -> int | None:
    """The body length a complete request head declares: its Content-Length, 0 without one,
    None when it is chunked (any Transfer-Encoding). A malformed length counts as 0: aiohttp
    refuses that request itself, and closes the connection."""
    lowered = head.lower()
    if b"\ntransfer-encoding:" in lowered:
        return None
    at = lowered.find(b"\ncontent-length:")
    if at < 0:
        return 0
    value = lowered[at + len(b"\ncontent-length:"): lowered.find(b"\r\n", at + 1)].strip()
    return int(value) if value.isdigit() else 0


class HeadGuard(asyncio.Protocol):
    """One accepted connection, handed to aiohttp's protocol (`make_handler`) for the rest of
    its life, every request head counted on its way there (see the module's doc). A subclass
    may refuse the connection itself (`admit`) and count refusals (`refused`)."""

    def __init__(self, make_handler: Callable[[], ProblemRequestHandler], head_max_bytes: int,
                 answers: dict[Refusal, bytes]) -> None:
        self._make_handler = make_handler
        self._head_max_bytes = head_max_bytes
        self._answers = answers
        self._handler: ProblemRequestHandler | None = None
        self._transport: asyncio.Transport | None = None
        self._mode: Part = "head"  # what the next bytes from the client are
        self._head = bytearray()  # the head (or chunk size line, or trailers) being received
        self._line_checked = False  # the head's request line has been looked at
        self._body_left = 0  # bytes of the current body or chunk (with its CRLF) still to come
        self._answered = False  # the guard answered: the rest is read and dropped until closed
        self.in_flight = 0  # requests whose head has arrived and whose answer is not written yet
        self._linger: asyncio.TimerHandle | None = None

    # -- hooks -----------------------------------------------------------------------------

    def admit(self, transport: asyncio.Transport) -> bool:
        """Whether to serve this connection (False: the subclass has closed it)."""
        return True

    def released(self) -> None:
        """The admitted connection has ended."""

    def refused(self, reason: Refusal) -> None:
        """The guard answered `reason` and closes the connection."""

    def requests_changed(self, in_flight: int) -> None:
        """A request head arrived, or a request's answer was written: `in_flight` are open."""

    def lone_request(self, data: bytes) -> bool:
        """Whether the subclass answers `data` itself: exactly one whole request (head and
        body), on a connection with nothing else in flight and aiohttp idle. It then calls
        `response_done` once its answer is written; False hands `data` to aiohttp."""
        return False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        if not self.admit(transport):
            return
        self._transport = transport
        self._handler = self._make_handler()
        self._handler.on_response_done = self.response_done
        self._handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        if self._transport is None:
            return  # never admitted
        self._transport = None
        self.released()
        handler, self._handler = self._handler, None
        if handler is not None:
            handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._handler is None or self._answered:
            return
        at_boundary = not self.in_flight and self._mode == "head" and not self._head
        refusal = self._scan(data)
        if refusal is not None:
            self._answer(refusal)
            return
        if (at_boundary and self.in_flight == 1 and self._mode == "head" and not self._head
                and self._handler.idle() and self.lone_request(data)):
            return
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self._answered:
            return False  # the client is done too: close now
        if self._handler is not None:
            self._handler.eof_received()
        return None

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()

    # -- the heads -------------------------------------------------------------------------

    def _scan(self, data: bytes) -> Refusal | None:
        """Follow `data` through heads and bodies: the refusal of the first head that breaks a
        rule, or None (every byte of it may go to aiohttp). A chunked body's size lines and
        trailers are held to the head limit too; its data is skipped like a Content-Length's."""
        pos, size, limit = 0, len(data), self._head_max_bytes
        while pos < size:
            mode = self._mode
            if mode in ("body", "chunk_data"):
                taken = min(self._body_left, size - pos)
                self._body_left -= taken
                pos += taken
                if not self._body_left:
                    self._mode = "head" if mode == "body" else "chunk_size"
                continue
            before = len(self._head)
            self._head += data[pos: pos + limit + 1 - before]  # one byte past the limit tells
            if mode == "head" and not self._line_checked and (refusal := self._check_request_line()):
                return refusal
            if mode == "chunk_size":
                end = self._head.find(b"\n", before)
                part_size = end + 1
            elif mode == "trailers" and self._head.startswith(b"\r\n"):
                end, part_size = 0, 2  # no trailers: the blank line alone
            else:
                end = self._head.find(HEAD_END, max(0, before - len(HEAD_END) + 1))
                part_size = end + len(HEAD_END)
            if end < 0:
                return "head_too_large" if len(self._head) > limit else None
            if part_size > limit:
                return "head_too_large"
            part = bytes(self._head[:part_size])
            pos += part_size - before
            self._head.clear()
            self._line_checked = False
            if mode == "chunk_size":
                chunk = chunk_size(part)
                self._mode, self._body_left = ("chunk_data", chunk + 2) if chunk else ("trailers", 0)
            elif mode == "trailers":
                self._mode = "head"
            else:
                self.in_flight += 1
                self.requests_changed(self.in_flight)
                length = body_length(part)
                if length is None:
                    self._mode = "chunk_size"
                elif length:
                    self._mode, self._body_left = "body", length
        return None

    def response_done(self) -> None:
        if self.in_flight:
            self.in_flight -= 1
        self.requests_changed(self.in_flight)

    def _check_request_line(self) -> Refusal | None:
        # Empty lines before a request line are allowed (RFC 9112, 2.2).
        start = 0
        while self._head.startswith(b"\r\n", start):
            start += 2
        eol = self._head.find(b"\n", start)
        if eol < 0:
            return None
        self._line_checked = True
        return None if self._head[:eol].endswith(HTTP1_VERSIONS) else "bad_request_line"

    def _answer(self, refusal: Refusal) -> None:
        """Answer `refusal`, then FIN. aiohttp is told the connection is gone first, so that
        nothing it still had to say is written after the answer (a request pipelined before
        the refused one goes unanswered: the connection ends here). What the client still
        sends is read and dropped for LINGER_S, so that closing finds nothing unread (which
        would reset the connection and could destroy the answer before the client read it)."""
        transport = cast(asyncio.Transport, self._transport)
        self._answered = True
        self.refused(refusal)
        handler, self._handler = self._handler, None
        if handler is not None:
            handler.transport = None  # aiohttp closes the transport it holds when told it is lost
            handler.connection_lost(None)
        transport.write(self._answers[refusal])
        if transport.can_write_eof():
            transport.write_eof()
        self._linger = asyncio.get_running_loop().call_later(LINGER_S, transport.close)


_LINGER_OFF = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}


def reset(transport: asyncio.BaseTransport) -> None:
    """Close with an RST: the client sees a refusal at once, and no TIME_WAIT stays behind here
    (a plain close would send a FIN and keep the socket's state for a minute)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
        except OSError:  # closing anyway
            pass
    cast(asyncio.Transport, transport).abort()
