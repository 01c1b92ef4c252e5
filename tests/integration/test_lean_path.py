"""The lean path (ingest.lean) against a real ingest: a plain purchase request is answered
there, and every kind of answer it gives is the answer aiohttp's route gives to the same request
(the same status, header names and problem); a request that is not plain goes to aiohttp; what
a client pipelines behind a pending answer is answered after it, in order; a wait longer than
the idle deadline is not cut off by it; a client that goes away ends its wait."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import msgspec
import pytest

from launch import processes as procs
from tests.auth import TEST_ADMIN_TOKEN, token
from tests.conftest import seed_sku
from tests.integration.test_edge_limits import metric

SKU = "lean-1"
LEAN = "flashsale_ingest_lean_requests"
Answer = tuple[int, dict[str, str], bytes]


def post(user: str | None, body: bytes, *, key: str | None = None, target: str = "/v1/purchases",
         extra: str = "", content_type: str = "application/json") -> bytes:
    head = f"POST {target} HTTP/1.1\r\nHost: ingest\r\nContent-Type: {content_type}\r\n"
    if user is not None:
        head += f"Authorization: Bearer {token(user)}\r\n"
    if key is not None:
        head += f"Idempotency-Key: {key}\r\n"
    head += extra + f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=15)
    status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def one(port: int, request: bytes) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await read_answer(reader)
    finally:
        writer.close()


async def lean_count(http: aiohttp.ClientSession, settings) -> float:
    return sum((await metric(http, settings, LEAN)).values())


def body(sku: str = SKU, qty: int = 1, **extra: object) -> bytes:
    return json.dumps({"sku": sku, "qty": qty, **extra}).encode()


# (name, request as the lean path takes it, given a distinct buyer and key per call)
CASES = {
    "accepted": lambda u, k: post(u, body(), key=k),
    "no token": lambda u, k: post(None, body(), key=k),
    "bad token": lambda u, k: post(u, body(), key=k, extra="Authorization: Bearer x.y.z\r\n"),
    "malformed json": lambda u, k: post(u, b"{", key=k),
    "invalid body": lambda u, k: post(u, body(qty=0), key=k),
    "unknown field": lambda u, k: post(u, body(colour="red"), key=k),
    "other buyer in body": lambda u, k: post(u, body(user_id="mallory"), key=k),
    "unknown sku": lambda u, k: post(u, body(sku="nope-1"), key=k),
    "bad key": lambda u, k: post(u, body(), key=k + " x"),
    "two keys": lambda u, k: post(u, body(), key=k, extra=f"Idempotency-Key: {k}-2\r\n"),
    "qty over max": lambda u, k: post(u, body(qty=10_000), key=k),
}


def through_aiohttp(request: bytes) -> bytes:
    # The same request with a query string: the same route, never plain.
    return request.replace(b"POST /v1/purchases ", b"POST /v1/purchases?via=aiohttp ", 1)


def shape(answer: Answer) -> tuple[int, list[str], str | None]:
    status, headers, raw = answer
    is_problem = headers["content-type"].startswith("application/problem")
    problem = json.loads(raw).get("type") if is_problem else None
    return status, sorted(headers), problem


@pytest.mark.parametrize("case", sorted(CASES))
async def test_each_answer_is_the_one_aiohttp_gives(system, settings, case):
    await seed_sku(settings, SKU, stock=100)
    system.start_ingest()
    port = settings.ingest_port
    make = CASES[case]
    async with aiohttp.ClientSession() as http:
        before = await lean_count(http, settings)
        lean = await one(port, make("lean-buyer", "k-lean-1"))
        after = await lean_count(http, settings)
        plain = await one(port, through_aiohttp(make("aiohttp-buyer", "k-aiohttp-1")))
        assert await lean_count(http, settings) == after, "a request with a query is not plain"
    print(f"{case}: lean {lean[0]} {lean[2][:120]!r}; aiohttp {plain[0]} {plain[2][:120]!r}")
    assert after == before + 1
    assert shape(lean) == shape(plain)
    assert lean[1]["server"] == "flashsale" and "date" in lean[1]


async def test_a_retry_is_the_same_purchase_on_either_path(system, settings):
    await seed_sku(settings, SKU, stock=100)
    system.start_ingest()
    first = await one(settings.ingest_port, post("retrier", body(), key="k-retry"))
    again = await one(settings.ingest_port, through_aiohttp(post("retrier", body(), key="k-retry")))
    lean_again = await one(settings.ingest_port, post("retrier", body(), key="k-retry"))
    reused = await one(settings.ingest_port, post("retrier", body(qty=2), key="k-retry"))
    assert first[0] == again[0] == lean_again[0] == 202
    assert json.loads(first[2])["id"] == json.loads(again[2])["id"] == json.loads(lean_again[2])["id"]
    assert reused[0] == 422 and json.loads(reused[2])["type"].endswith("idempotency_key_reused")


@pytest.mark.parametrize("extra", [
    "Connection: close\r\n", "Expect: 100-continue\r\n", "Content-Encoding: identity\r\n",
    "X-Bin: \x01\r\n", "Host: second\r\n",
])
async def test_a_request_that_is_not_plain_goes_to_aiohttp(system, settings, extra):
    await seed_sku(settings, SKU, stock=100)
    system.start_ingest()
    async with aiohttp.ClientSession() as http:
        before = await lean_count(http, settings)
        answer = await one(settings.ingest_port, post("not-plain", body(), key="k-np", extra=extra))
        assert await lean_count(http, settings) == before
    print(f"{extra!r}: {answer[0]}")
    assert answer[0] in (100, 202, 400)  # 100: aiohttp asks for the body


async def test_pipelined_requests_are_answered_in_order(system, settings):
    """The first waits (no committer runs: it stays pending for its whole wait); the second,
    sent behind it on the same connection, is answered after it."""
    await seed_sku(settings, SKU, stock=100)
    system.start_ingest()
    reader, writer = await asyncio.open_connection("127.0.0.1", settings.ingest_port)
    try:
        writer.write(post("piper", body(), key="k-pipe-1", extra="Prefer: wait=1\r\n"))
        await asyncio.sleep(0.2)  # answered on the lean path, waiting
        writer.write(post("piper", body(), key="k-pipe-2") + post("piper", body(), key="k-pipe-3"))
        answers = [await read_answer(reader) for _ in range(3)]
    finally:
        writer.close()
    assert [a[0] for a in answers] == [202, 202, 202]
    assert [a[1]["idempotency-key"] for a in answers] == ["k-pipe-1", "k-pipe-2", "k-pipe-3"]
    assert "preference-applied" in answers[0][1]


async def test_a_wait_longer_than_the_idle_deadline_is_answered(system, settings):
    quick = msgspec.structs.replace(settings, idle_timeout_s=1.0)
    await seed_sku(quick, SKU, stock=100)
    system.start_ingest(quick)
    reader, writer = await asyncio.open_connection("127.0.0.1", quick.ingest_port)
    try:
        writer.write(post("patient", body(), key="k-patient", extra="Prefer: wait=2.5\r\n"))
        status, headers, _ = await read_answer(reader)
        assert (status, headers["preference-applied"]) == (202, "wait=2.5")
        # Idle from now: the idle deadline closes the connection again.
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    finally:
        writer.close()


async def test_a_client_that_goes_away_ends_its_wait(system, settings):
    await seed_sku(settings, SKU, stock=100)
    system.start_ingest()
    async with aiohttp.ClientSession() as http:
        for n in range(3):
            _, writer = await asyncio.open_connection("127.0.0.1", settings.ingest_port)
            writer.write(post("leaver", body(), key=f"k-leave-{n}", extra="Prefer: wait=30\r\n"))
            await asyncio.sleep(0.3)
            writer.close()
        await asyncio.sleep(0.3)
        async with http.get(procs.ingest_metrics_url(settings)) as r:
            text = await r.text()
    waits = [line for line in text.splitlines() if line.startswith("flashsale_ingest_waiters ")]
    print(waits)
    assert waits and float(waits[0].split()[1]) == 0


async def test_an_admin_token_is_no_buyer_on_the_lean_path(system, settings):
    await seed_sku(settings, SKU, stock=100)
    system.start_ingest()
    request = post(None, body(), key="k-admin", extra=f"Authorization: Bearer {TEST_ADMIN_TOKEN}\r\n")
    answer = await one(settings.ingest_port, request)
    assert answer[0] == 401
