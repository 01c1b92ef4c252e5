"""The head guard every port has, fed bytes by hand: it follows heads and bodies (Content-Length
and chunked, pipelined or split anywhere) and refuses the first head over the limit or with a
request line that is not HTTP/1.x, whatever request of the connection it is."""

from __future__ import annotations

import pytest

from flashsale.head_guard import HeadGuard, body_length, chunk_size, guard_answers

LIMIT = 1024


class Recorder:
    """What the guard hands on: the bytes aiohttp would parse."""

    def __init__(self) -> None:
        self.fed = b""

    def data_received(self, data: bytes) -> None:
        self.fed += data


def guard() -> tuple[HeadGuard, Recorder]:
    g = HeadGuard(lambda: None, LIMIT, guard_answers(LIMIT))  # type: ignore[arg-type,return-value]
    recorder = Recorder()
    g._handler = recorder  # type: ignore[assignment]
    return g, recorder


def scan_all(stream: bytes, split: int | None = None):
    """Feed `stream` in pieces of `split` bytes (all at once: None); the first refusal."""
    g, _ = guard()
    pieces = [stream] if split is None else [stream[i:i + split] for i in range(0, len(stream), split)]
    for piece in pieces:
        if (refusal := g._scan(piece)) is not None:
            return refusal
    return None


GET = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
POST = b"POST /v1/purchases HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n{\r\n\r\n\r\n\r\n}"
CHUNKED = (b"POST /v1/purchases HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"4;ext=1\r\n\r\n\r\n\r\n" b"2\r\n{}\r\n" b"0\r\nX-Trailer: 1\r\n\r\n")
CHUNKED_NO_TRAILERS = CHUNKED.replace(b"X-Trailer: 1\r\n", b"")
BIG = b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * LIMIT + b"\r\n\r\n"


@pytest.mark.parametrize("split", [None, 1, 2, 3, 7, 64])
def test_requests_that_fit_pass_whatever_their_bodies_and_splits(split):
    stream = GET + POST + CHUNKED + b"\r\n" + GET + CHUNKED_NO_TRAILERS + POST + GET
    assert scan_all(stream, split) is None


@pytest.mark.parametrize("split", [None, 1, 5, 100])
@pytest.mark.parametrize("before", [b"", GET, POST, CHUNKED, GET + POST + CHUNKED_NO_TRAILERS])
def test_a_head_over_the_limit_is_refused_on_any_request_of_the_connection(before, split):
    assert scan_all(before + BIG, split) == "head_too_large"
    assert scan_all(before + BIG[:LIMIT], split) is None  # not yet: it may still end in time


def test_a_head_of_exactly_the_limit_fits():
    head = b"GET / HTTP/1.1\r\nX: " + b"a" * (LIMIT - 23) + b"\r\n\r\n"
    assert len(head) == LIMIT and scan_all(POST + head) is None
    assert scan_all(POST + head[:-4] + b"a\r\n\r\n") == "head_too_large"


@pytest.mark.parametrize("line", [b"GET /healthz\r\n", b"GET / HTTP/1.7\r\n", b"GET / HTTP/2\r\n",
                                  b"GET / HTTP/1.1\n"])
def test_a_request_line_that_is_not_http1_is_refused_when_it_ends(line):
    assert scan_all(line[:-1]) is None
    assert scan_all(line) == "bad_request_line"
    assert scan_all(GET + POST + line) == "bad_request_line"
    assert scan_all(b"\r\n" + GET) is None  # an empty line before a request is allowed


def test_chunk_size_lines_and_trailers_are_held_to_the_limit():
    head = CHUNKED.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert scan_all(head + b"1" * (LIMIT + 1)) == "head_too_large"
    assert scan_all(head + b"0\r\n" + b"X: " + b"a" * LIMIT + b"\r\n\r\n") == "head_too_large"


def test_bytes_go_to_aiohttp_as_they_came_until_a_refusal():
    g, recorder = guard()
    g.data_received(GET + POST)
    assert recorder.fed == GET + POST


def test_framing():
    assert body_length(b"POST / HTTP/1.1\r\ncontent-LENGTH:  12 \r\n\r\n") == 12
    assert body_length(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n") == 0  # aiohttp refuses it
    assert body_length(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n") is None
    assert body_length(GET) == 0
    assert chunk_size(b"1aF;name=value\r\n") == 0x1AF and chunk_size(b"zz\r\n") == 0
