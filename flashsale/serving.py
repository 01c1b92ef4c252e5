"""How every flashsale HTTP port is served: ingest's public and metrics ports, the committers'
and the gateway's status ports, the fake PSP. One place, so that what a client can make a port
do is the same everywhere: behind the head guard (`head_guard.HeadGuard`), with aiohttp's
protocol answering what it cannot parse as problems (`problem_json.ProblemRequestHandler`), and
no `Server` banner but `flashsale`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from flashsale.head_guard import HEAD_MAX_BYTES_DEFAULT, LINGER_S, HeadGuard, guard_answers
from flashsale.problem_json import SERVER, ProblemRequestHandler


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp would announce "Python/3.x aiohttp/3.y": nothing a client needs, much an attacker likes.
    response.headers["Server"] = SERVER


class Served:
    """An app being served by `serve_app`: `cleanup()` stops accepting, ends the connections and
    runs the app's cleanup."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server) -> None:
        self.runner = runner
        self.server = server

    async def cleanup(self) -> None:
        self.server.close()
        await self.runner.cleanup()


GuardFactory = Callable[[Callable[[], ProblemRequestHandler], int], asyncio.Protocol]


def plain_guard(make_handler: Callable[[], ProblemRequestHandler], head_max_bytes: int) -> asyncio.Protocol:
    return HeadGuard(make_handler, head_max_bytes, guard_answers(head_max_bytes))


async def serve_app(
    app: web.Application, host: str, port: int, *, head_max_bytes: int = HEAD_MAX_BYTES_DEFAULT,
    guard: GuardFactory = plain_guard, keepalive_timeout: float = 75.0,
    handler_cancellation: bool = False, shutdown_timeout: float = 60.0, reuse_port: bool = False,
    backlog: int = 100,
) -> Served:
    """Serve `app` on host:port behind `guard`, with `ProblemRequestHandler` and no banner.
    Runs the app's startup (a failure to bind runs its cleanup too)."""
    app.on_response_prepare.append(_server_header)
    handler_options: dict[str, Any] = {
        "access_log": None, "keepalive_timeout": keepalive_timeout, "lingering_time": LINGER_S,
        # No single line of a head may be longer than the whole head may be.
        "max_line_size": head_max_bytes, "max_field_size": head_max_bytes,
    }
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout,
                           handler_cancellation=handler_cancellation, **handler_options)
    await runner.setup()
    manager = runner.server
    if manager is None:
        raise RuntimeError("aiohttp runner has no server after setup()")
    loop = asyncio.get_running_loop()

    def make_handler() -> ProblemRequestHandler:
        return ProblemRequestHandler(manager, loop=loop, **handler_options)

    try:
        server = await loop.create_server(lambda: guard(make_handler, head_max_bytes), host, port,
                                          reuse_port=reuse_port, backlog=backlog)
    except BaseException:
        await runner.cleanup()
        raise
    return Served(runner, server)
