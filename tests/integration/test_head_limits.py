"""Request heads a port will not read, against real processes: an oversized head is a 431
problem, on every request of a kept-alive connection, without the process's memory growing
with it; a request that cannot be parsed is a 400 problem without a traceback in the log,
however many arrive; on every port (ingest, its metrics, a committer's and the gateway's
status ports, the fake PSP) every such answer is problem+json, without a version banner and
without echoing what was sent."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import msgspec

from launch.processes import (
    committer_status_port,
    fakepsp_process,
    gateway_process,
    gateway_ready_url,
    spare_port,
)
from tests.auth import token
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
    # 64 KB in one header, sent at once.
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
    counted = refusals(samples, "bad_request") + refusals(samples, "bad_request_line")
    log = system.processes["ingest"].log_path.read_text()
    lines = [line for line in log.splitlines() if '"edge refusal"' in line]
    print(f"{rounds * len(bad)} malformed requests: {counted:g} counted, {len(lines)} log lines:",
          *lines[:3], sep="\n")
    assert "Traceback" not in log
    assert "Error handling request" not in log
    # Counted as far as aiohttp reports them (a bad method on a connection's first request it
    # logs at debug only, so that TLS probes are not counted), logged once per interval.
    assert counted >= rounds * (len(bad) - 1)
    assert 1 <= len(lines) < counted


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length from a kept-alive connection."""
    async with asyncio.timeout(15):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.strip().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: ingest\r\n\r\n"
# A second request too big to buffer: 120 headers of 16 KB, 1.9 MB in all.
HUGE_HEAD = (b"GET /healthz HTTP/1.1\r\nHost: ingest\r\n"
             + b"".join(b"X-Big-%d: " % i + b"a" * 16_000 + b"\r\n" for i in range(120)) + b"\r\n")


async def test_every_head_of_a_kept_alive_connection_is_limited(system, settings):
    s = msgspec.structs.replace(settings, client_connections_max=500)
    ingest = system.start_ingest(s)
    port = s.ingest_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Requests that fit, one of them with a body holding a blank line, then pipelined ones.
    body = b'{"sku": "x\\r\\n\\r\\n"}'
    writer.write(HEALTHZ + b"PUT /v1/admin/skus/x HTTP/1.1\r\nHost: ingest\r\nContent-Type: "
                 b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body) + HEALTHZ * 3)
    statuses = [(await read_response(reader))[0] for _ in range(5)]
    assert statuses == [200, 401, 200, 200, 200], statuses
    writer.write(HUGE_HEAD)
    status, headers, problem = await read_response(reader)
    assert status == 431 and headers["content-type"].startswith(PROBLEM), problem
    assert headers["connection"] == "close" and json.loads(problem)["type"].endswith("/headers_too_large")
    assert await asyncio.wait_for(reader.read(), 15) == b""  # and closed
    writer.close()

    # 200 connections doing the same at once: the process's memory does not follow.
    rss_before = rss_kb(ingest.proc.pid)

    async def big_second_head() -> int:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            w.write(HEALTHZ)
            assert (await read_response(r))[0] == 200
            w.write(HUGE_HEAD)
            try:
                await w.drain()
            except ConnectionError:
                pass
            return (await read_response(r))[0]
        finally:
            w.close()

    answers = await asyncio.gather(*(big_second_head() for _ in range(200)), return_exceptions=True)
    rss_peak = rss_kb(ingest.proc.pid)
    await asyncio.sleep(3)  # the refused connections linger, then close
    rss_after = rss_kb(ingest.proc.pid)
    print(f"\n200 connections with a 1.9 MB second head: {answers.count(431)} answered 431, others "
          f"{[a for a in answers if a != 431][:3]}; ingest RSS {rss_before // 1024} MB before, "
          f"{rss_peak // 1024} MB after, {rss_after // 1024} MB once closed")
    assert answers.count(431) >= 190  # a 431 the reset of a closing connection beat is not an error here
    assert rss_after - rss_before < 64 * 1024  # no head is buffered past head_max_bytes


BANNER = (b"Python/", b"aiohttp")
MARK = b"EVIL-M4RK"
# What aiohttp refuses while parsing (and the guard in front of it), each carrying MARK.
MALFORMED = {
    "CL and TE": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
                 b"X: EVIL-M4RK\r\n\r\n0\r\n\r\n",
    "duplicate Content-Length": b"POST /EVIL-M4RK HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                                b"Content-Length: 2\r\n\r\nab",
    "obs-fold": b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: b\r\n EVIL-M4RK\r\n\r\n",
    "bare LF": b"GET /EVIL-M4RK HTTP/1.1\nHost: a\n\n",
    "NUL in a header": b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: EVIL-M4RK\x00\r\n\r\n",
    "129 headers": b"GET /healthz HTTP/1.1\r\nHost: a\r\n"
                   + b"".join(b"X-%d: EVIL-M4RK\r\n" % i for i in range(129)) + b"\r\n",
    "raw UTF-8 in the path": "GET /EVIL-M4RK/é HTTP/1.1\r\nHost: a\r\n\r\n".encode(),
    "no Host": b"GET /EVIL-M4RK HTTP/1.1\r\n\r\n",
    "HTTP/0.9": b"GET /healthz\r\n",
    "an unknown version": b"GET /healthz HTTP/1.7\r\nHost: a\r\n\r\n",
    "a bad method": b"EVIL-M4RK\x01 / HTTP/1.1\r\nHost: a\r\n\r\n",
    "no such route": b"GET /EVIL-M4RK HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "wrong method": b"DELETE /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
}

API_ANSWERED = {"no such route", "wrong method"}  # parsed requests that reach an app


async def test_every_port_answers_problems_without_a_banner_or_an_echo(system, settings):
    psp, psp_url = fakepsp_process(settings, system.log_dir)
    psp.start()
    system.processes["fakepsp"] = psp
    psp.wait_http_ok(psp_url + "/healthz")
    s = msgspec.structs.replace(settings, psp_url=psp_url, gateway_metrics_port=spare_port(settings))
    system.settings = s
    system.start()
    gateway = gateway_process(s, system.log_dir).start()
    system.processes["gateway"] = gateway
    gateway.wait_http_ok(gateway_ready_url(s))
    ports = {"ingest": s.ingest_port, "ingest metrics": s.ingest_metrics_port,
             "committer status": committer_status_port(s, 0),
             "gateway status": s.gateway_metrics_port, "fake PSP": int(psp_url.rpartition(":")[2])}
    for name, port in ports.items():
        # A good answer has no banner either.
        good = b"/metrics" if name == "ingest metrics" else b"/healthz"
        status, headers, _ = await exchange(port, [b"GET " + good + b" HTTP/1.1\r\nHost: a\r\n"
                                                   b"Connection: close\r\n\r\n"])
        assert status == 200 and headers["server"] == "flashsale", (name, headers)
        for case, raw in MALFORMED.items():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(), 15)
            finally:
                writer.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            where = (name, case, answer[:300])
            assert head.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), where
            assert b"\r\nserver: flashsale" in head.lower(), where
            assert not any(b in answer for b in BANNER) and MARK not in answer, where
            if name == "fake PSP" and case in API_ANSWERED:
                continue  # the stand-in PSP answers its API's errors as the PSP it mimics would
            assert b"content-type: application/problem+json" in head.lower(), where
            assert json.loads(body)["status"] == int(head.split()[1]), where
    print(f"\n{len(MALFORMED)} malformed requests on each of {sorted(ports)}: problem+json, no banner, "
          "no echo")


async def test_parsed_requests_are_refused_without_echoing_what_was_sent(system, settings):
    """Past the head parser too: every refusal names the rule, never the bytes that broke it
    (a name outside its grammar, a media type, a token's algorithm, an unknown key, an enum)."""
    system.start()
    mark = MARK.decode() + "<>"
    base = system.base_url
    buyer = {"Authorization": f"Bearer {token('prober')}"}
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    forged_alg = ".".join(base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
                          for part in ({"alg": mark, "typ": "JWT"}, {"sub": "x"})) + ".c2ln"
    asks: list[tuple[str, str, dict[str, str], bytes | None]] = [
        ("GET", f"/v1/skus/{mark}", {}, None),
        ("GET", f"/v1/skus/{mark}/draw", {}, None),
        ("GET", f"/v1/purchases/{mark}", buyer, None),
        ("POST", f"/v1/purchases/{mark}/cancel", buyer, None),
        ("GET", f"/static/{mark}", {}, None),
        ("POST", "/v1/purchases", {**buyer, "Content-Type": f"text/{MARK.decode()}"}, b"{}"),
        ("POST", "/v1/purchases", {"Authorization": f"Bearer {forged_alg}",
                                   "Content-Type": "application/json"}, b"{}"),
        ("POST", "/v1/purchases", {**buyer, "Content-Type": "application/json"},
         json.dumps({"sku": "a", "qty": 1, mark: 1}).encode()),
        ("PUT", "/v1/admin/skus/a", {**admin, "Content-Type": "application/json"},
         json.dumps({"stock": 1, "payment": mark}).encode()),
    ]
    async with aiohttp.ClientSession() as http:
        for method, path, headers, body in asks:
            async with http.request(method, base + path, headers=headers, data=body) as r:
                answer = await r.read()
            assert 400 <= r.status < 500 and MARK not in answer, (method, path, r.status, answer)
