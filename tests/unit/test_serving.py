"""Every port as `serve_app` serves it, on a loopback socket: no aiohttp banner, aiohttp's own
errors and what it cannot parse answered as problems, a request line that is not HTTP/1.x
answered by the head guard; and ingest's /metrics port: none at 0, a clear error when taken."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web

from flashsale.problem_json import PROBLEM_CONTENT_TYPE, SERVER, problem_middleware
from flashsale.serving import Served, serve_app
from ingest.__main__ import MetricsPortTaken, serve_metrics

RETRY_AFTER_S = 1


async def hello(_: web.Request) -> web.Response:
    return web.Response(text="hello")


def port_of(served: Served) -> int:
    return int(served.server.sockets[0].getsockname()[1])


async def served_app() -> Served:
    app = web.Application(middlewares=[problem_middleware])
    app.router.add_get("/hello", hello)
    return await serve_app(app, "127.0.0.1", 0)


async def raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await reader.read()
    writer.close()
    return answer


async def test_answers_carry_no_banner_and_errors_are_problems():
    served = await served_app()
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port_of(served)}"
            async with http.get(base + "/hello") as resp:
                assert resp.status == 200 and resp.headers["Server"] == SERVER
            async with http.get(base + "/nothing") as resp:
                assert resp.status == 404 and resp.content_type == PROBLEM_CONTENT_TYPE
                assert resp.headers["Server"] == SERVER
            async with http.post(base + "/hello") as resp:
                assert resp.status == 405 and resp.headers["Allow"] == "GET,HEAD"
    finally:
        await served.cleanup()


async def test_what_aiohttp_cannot_parse_and_http_0_9_are_400_problems():
    served = await served_app()
    try:
        for request in (b"GET /hello\r\n\r\n",  # HTTP/0.9: the head guard answers
                        b"GET /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                        b"Content-Length: 2\r\n\r\nab"):  # aiohttp refuses it
            answer = await raw(port_of(served), request)
            assert answer.split(b" ", 2)[1] == b"400", answer
            assert PROBLEM_CONTENT_TYPE.encode() in answer and b"aiohttp" not in answer
    finally:
        await served.cleanup()


async def test_metrics_port_0_serves_none_and_a_taken_port_is_a_clear_error():
    assert await serve_metrics(0, web.Application(), RETRY_AFTER_S) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortTaken) as exc:
            await serve_metrics(port, web.Application(), RETRY_AFTER_S)
        assert exc.value.port == port
