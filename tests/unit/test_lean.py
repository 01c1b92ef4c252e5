"""What the lean path takes (ingest.lean.parse): a plain purchase request, with the headers the
purchase reads collected as aiohttp would give them; anything that is not plain (another request
line or version, a query, framing other than one Content-Length, a header aiohttp would treat
specially, bytes a token or a value may not hold) is left to aiohttp. And what it writes
(`render`): one head and body, never a header value with a line break."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.lean import HEADERS_MAX, parse, render, rendered
from ingest.problems import Rejection

BODY = b'{"sku":"sneaker-42","qty":1}'
BODY_MAX = 1024


def request(*headers: str, body: bytes = BODY, line: str = "POST /v1/purchases HTTP/1.1",
            length: bool = True) -> bytes:
    fields = ["Host: ingest", "Content-Type: application/json", *headers]
    if length:
        fields.append(f"Content-Length: {len(body)}")
    return ("\r\n".join([line, *fields]) + "\r\n\r\n").encode("latin-1") + body


def test_a_plain_request_is_taken_with_the_headers_a_purchase_reads():
    plain = parse(request("Authorization: Bearer t1", "Idempotency-Key:  k-1 ",
                          "Idempotency-Key: k-2", "Prefer: wait=5", "Prefer: wait=9",
                          "X-Forwarded-For: 10.0.0.1", "x-forwarded-for: 10.0.0.2",
                          "User-Agent: wrk", "Connection: Keep-Alive"), BODY_MAX)
    assert plain is not None
    assert plain.authorization == ["Bearer t1"]
    assert plain.idempotency_keys == ["k-1", "k-2"]  # both, in order: two keys are a 400
    assert plain.prefer == "wait=5"  # the first, as aiohttp's headers.get
    assert plain.forwarded_for == ["10.0.0.1", "10.0.0.2"]
    assert plain.body == BODY


@pytest.mark.parametrize("content_type", [
    "application/json", "Application/JSON", "application/json; charset=utf-8",
    "application/json;charset=UTF-8",
])
def test_json_content_types_are_plain(content_type):
    raw = request(body=BODY).replace(b"Content-Type: application/json",
                                     f"Content-Type: {content_type}".encode())
    assert parse(raw, BODY_MAX) is not None


@pytest.mark.parametrize("raw", [
    request(line="POST /v1/purchases HTTP/1.0"),
    request(line="POST /v1/purchases?x=1 HTTP/1.1"),
    request(line="PUT /v1/purchases HTTP/1.1"),
    request(line="POST /v1/purchases/ HTTP/1.1"),
    request(line="post /v1/purchases HTTP/1.1"),
    request(length=False),
    request("Content-Length: 28"),  # two lengths
    request(body=b"{}", length=False) .replace(b"\r\n\r\n", b"\r\nContent-Length: 3\r\n\r\n"),
    request("Transfer-Encoding: chunked"),
    request("Content-Encoding: gzip"),
    request("Expect: 100-continue"),
    request("Upgrade: websocket"),
    request("Connection: close"),
    request("Connection: keep-alive, Upgrade"),
    request("Host: second"),
    request("Content-Type: text/plain"),
    request().replace(b"Host: ingest\r\n", b""),
    request().replace(b"Content-Type: application/json", b"Content-Type: text/json"),
    request().replace(b"Content-Type: application/json\r\n", b""),
    request(" folded: value"),  # obs-fold
    request("Bad Name: x"),
    request("Name : x"),
    request("X: a\x00b"),
    request("X: a\x7fb"),
    request("X: caf\xe9"),
    request("X: a\rb"),
    request("X: a\nb"),
    request(*[f"X-{i}: v" for i in range(HEADERS_MAX)]),
    request(body=b"x" * (BODY_MAX + 1)),
    request().replace(b"\r\n\r\n", b"\n\n"),
    b"POST /v1/purchases HTTP/1.1\r\n\r\n",
])
def test_what_is_not_plain_is_left_to_aiohttp(raw):
    assert parse(raw, BODY_MAX) is None


@given(st.binary(max_size=300))
def test_any_bytes_are_parsed_or_left_without_an_error(tail):
    plain = parse(b"POST /v1/purchases HTTP/1.1\r\n" + tail, BODY_MAX)
    assert plain is None or b"\r\n\r\n" in tail


def test_an_answer_is_one_head_and_its_body():
    raw = render(202, {"Location": "/v1/purchases/p_1"}, "application/json", b"{}")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 202 Accepted" and body == b"{}"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields["Content-Length"] == "2" and fields["Server"] == "flashsale"
    assert fields["Location"] == "/v1/purchases/p_1" and fields["Content-Type"] == "application/json"
    assert email.utils.parsedate_to_datetime(fields["Date"]).tzname() == "UTC"


def test_a_header_value_with_a_line_break_is_never_written():
    with pytest.raises(ValueError):
        render(202, {"Idempotency-Key": "k\r\nSet-Cookie: x=1"}, "application/json", b"{}")


def test_a_problem_is_written_as_aiohttp_would_and_may_close_the_connection():
    answer = rendered(Rejection(429, "rate_limited", "Too many requests", "slow down",
                                retry_after_s=2, headers={"Connection": "close"}).response())
    head = answer.raw.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 429 Too Many Requests\r\n") and answer.close
    assert "Retry-After: 2" in head and "Content-Type: application/problem+json" in head
    assert not rendered(Rejection(400, "bad", "Bad", "bad").response()).close
