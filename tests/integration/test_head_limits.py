"""Request heads ingest will not read, against a real ingest process (issue 9, finding 8): an
oversized head is a 431 problem, not aiohttp's plain-text 400; a request aiohttp cannot parse is
its 400 without a traceback in the log, however many arrive."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import msgspec

from tests.integration.test_edge_limits import metric, refusals

PROBLEM = "application/problem+json"


async def exchange(port: int, chunks: list[bytes]) -> tuple[int, dict[str, str], bytes]:
    """Send `chunks` (each its own write, drained) on one connection; the response until the
    server closes: status, headers (lower-case names), body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=15)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def request(extra_header_bytes: int) -> bytes:
    return (b"GET /healthz HTTP/1.1\r\nHost: ingest\r\nConnection: close\r\n"
            b"X-Padding: " + b"a" * extra_header_bytes + b"\r\n\r\n")


async def test_an_oversized_head_is_a_431_problem(system, settings):
    system.start_ingest()
    port = settings.ingest_port
    # 64 KB in one header, sent at once: the finding.
    status, headers, body = await exchange(port, [request(64 * 1024)])
    print(f"64 KB header: {status} {headers.get('content-type')} {body!r}")
    assert status == 431
    assert headers["content-type"].startswith(PROBLEM)
    assert headers["connection"] == "close"
    assert headers["server"] == "flashsale"
    problem = json.loads(body)
    assert problem["type"].endswith("/headers_too_large") and problem["status"] == 431
    assert str(settings.head_max_bytes) in problem["detail"]

    # Many small headers trickled in 1 KB writes add up just the same.
    many = b"GET /healthz HTTP/1.1\r\nHost: ingest\r\n" + b"X-A: " + b"b" * 1000 + b"\r\n"
    status, _, _ = await exchange(port, [many] + [b"X-B: " + b"c" * 1000 + b"\r\n"] * 20 + [b"\r\n"])
    assert status == 431

    # A head just under the limit is served, also when its blank line spans two writes.
    fits = request(settings.head_max_bytes - 200)
    assert len(fits) <= settings.head_max_bytes
    for split in (len(fits) - 1, len(fits) - 2, len(fits) - 3):
        status, _, body = await exchange(port, [fits[:split], fits[split:]])
        assert status == 200, body
    # One byte over is not.
    over = request(settings.head_max_bytes - len(request(0)) + 1)
    assert len(over) == settings.head_max_bytes + 1
    status, _, _ = await exchange(port, [over[:-2], over[-2:]])
    assert status == 431

    async with aiohttp.ClientSession() as ops:
        samples = await metric(ops, settings, "flashsale_ingest_edge_refusals_total")
    assert refusals(samples, "head_too_large") == 3
    log = system.processes["ingest"].log_path.read_text()
    assert "Traceback" not in log
    # Logged once per client per interval, not once per refusal.
    assert 1 <= log.count('"reason":"head_too_large"') < 3, log


async def test_a_configured_head_limit_is_the_one_enforced(system, settings):
    small = msgspec.structs.replace(settings, head_max_bytes=2048)
    system.start_ingest(small)
    status, _, _ = await exchange(small.ingest_port, [request(1500)])
    assert status == 200
    status, _, body = await exchange(small.ingest_port, [request(4000)])
    assert status == 431 and b"2048" in body


async def test_malformed_requests_are_400_without_a_traceback_each(system, settings):
    system.start_ingest()
    port = settings.ingest_port
    bad = [
        b"GET /healthz HTTP/1.1\r\nHost ingest\r\n\r\n",  # a header line without a colon
        b"GET /health\x01z HTTP/1.1\r\nHost: ingest\r\n\r\n",  # a control character in the target
        b"GET /healthz HTTP/1.1x\r\nHost: ingest\r\n\r\n",  # no such version
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # TLS to a plain port
    ]
    rounds = 10
    for _ in range(rounds):
        for raw in bad:
            status, _, body = await exchange(port, [raw])
            assert status == 400, (raw, status, body)
    # Still serving.
    status, _, _ = await exchange(port, [request(0)])
    assert status == 200
    async with aiohttp.ClientSession() as ops:
        samples = await metric(ops, settings, "flashsale_ingest_edge_refusals_total")
    counted = refusals(samples, "bad_request")
    log = system.processes["ingest"].log_path.read_text()
    lines = [line for line in log.splitlines() if "bad_request" in line]
    print(f"{rounds * len(bad)} malformed requests: {counted:g} counted, {len(lines)} log lines:",
          *lines[:3], sep="\n")
    assert "Traceback" not in log
    assert "Error handling request" not in log
    # Counted as far as aiohttp reports them (a bad method on a connection's first request it
    # logs at debug only, so that TLS probes are not counted), logged once per interval.
    assert counted >= rounds * (len(bad) - 1)
    assert 1 <= len(lines) < counted
