"""The generator processes' plumbing, against small fakes: progress lines into the live line,
wrk's result line, and one raw keep-alive HTTP connection against a tiny local server."""

from __future__ import annotations

import asyncio
import re

from bench.generators import GenLine, Live, _pump, parse_wrk, show_progress
from bench.httpconn import HttpConn, decode_answer


async def test_progress_lines_feed_the_live_line_and_anything_else_is_kept():
    stream = asyncio.StreamReader()
    stream.feed_data(b'{"n": 120, "sent": 130, "err": 2, "p99": 8.5}\nTraceback: boom\n{"broken\n')
    stream.feed_eof()
    live, sink = Live("[accepted flashsale max]"), []
    await _pump(1, stream, live, sink)
    assert live.gen_lines == {1: GenLine(n=120, sent=130, err=2, p99=8.5)}
    assert sink == ["Traceback: boom", '{"broken']


class _System:
    """What the live line asks a system: answers so far and its backlog."""

    def __init__(self) -> None:
        self.counts = [(100, 3), (250, 0)]
        self.asked_twice = asyncio.Event()

    async def live(self) -> tuple[int, int | None]:
        if len(self.counts) == 1:
            self.asked_twice.set()
        return self.counts.pop(0)


async def test_the_live_line_shows_the_answer_rate_and_the_worst_p99(capsys):
    live = Live("[x]", {0: GenLine(p99=4.0, err=1), 1: GenLine(p99=9.0, err=2)})
    system = _System()
    task = asyncio.create_task(show_progress(system, live, 0.0))
    await system.asked_twice.wait()
    await asyncio.sleep(0.1)  # the line is printed right after the answer
    task.cancel()
    err = capsys.readouterr().err
    assert "rate=-/s" in err  # the first second has no earlier count
    assert "p99=9.0ms errors=3/s backlog=0" in err
    assert re.search(r"rate=\d+/s", err.rsplit("\r", 1)[1])  # then (250 - 100) / the seconds between


def test_wrk_result_line_parses_and_its_absence_is_none():
    out = (b'noise\nWRK_JSON {"requests":1,"duration_us":1,"errors":{"connect":0,"read":0,"write":0,'
           b'"timeout":0,"status":0},"latency_us":{"p50":1,"p95":1,"p99":1,"max":1,"mean":1},'
           b'"statuses":{"202":1},"seconds":{"5":1},"ids":["p1"]}\n')
    w = parse_wrk(out)
    assert w is not None and (w.statuses, w.seconds, w.ids, w.repeated) == ({"202": 1}, {5: 1}, ["p1"], 0)
    assert parse_wrk(b"no result\n") is None


async def _serve(answers: list[bytes]) -> tuple[asyncio.Server, list[int]]:
    """A server answering each request (one per line of headers) with the next of `answers`;
    the list it returns counts the connections it accepted."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        while answers:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            answer = answers.pop(0)
            writer.write(answer)
            await writer.drain()
            if b"Connection: close" in answer:
                break
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), accepted


async def test_one_connection_reads_sized_and_chunked_bodies_and_reconnects_after_close():
    server, accepted = await _serve([
        b'HTTP/1.1 202 Accepted\r\nContent-Length: 30\r\n\r\n{"id":"p1","status":"pending"}',
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n2;x=1\r\nef\r\n0\r\n\r\n",
        b"HTTP/1.1 409 Conflict\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ])
    port = server.sockets[0].getsockname()[1]
    conn = HttpConn("127.0.0.1", port)
    request = b"POST /v1/purchases HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        status, body = await conn.request(request)
        assert status == 202 and decode_answer(body).status == "pending"
        assert await conn.request(request) == (200, b"abcdef")
        assert await conn.request(request) == (409, b"")  # and the server closed: so do we
        assert await conn.request(request) == (204, b"")  # on a new connection
        assert len(accepted) == 2
    finally:
        conn.close()
        server.close()
        await server.wait_closed()
