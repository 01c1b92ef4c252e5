"""`python -m committer --shard N`: the single writer of shard N."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import asyncpg
import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from committer import store
from committer.loop import Committer
from committer.machine import InvariantViolation
from config.settings import Settings, load
from flashsale.logs import kv, setup

log = logging.getLogger("committer")

RETRY_DELAY_S = 1.0
EXIT_FENCED = 3
EXIT_CORRUPT = 4


async def _serve_status(committer_ref: list[Committer], port: int) -> web.AppRunner | None:
    if not port:
        return None

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready = bool(committer_ref) and committer_ref[0].ready
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def main(settings: Settings, shard: int, status_port: int) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    current: list[Committer] = []
    runner = await _serve_status(current, status_port)
    epoch: int | None = None
    try:
        while not stopping.is_set():
            committer = Committer(settings, shard)
            committer.stopping = stopping
            current[:] = [committer]
            try:
                await committer.start(resume_epoch=epoch)
                epoch = committer.epoch
                await committer.run()
            except store.Fenced as e:
                log.error("stopping: fenced", extra=kv(shard=shard, error=str(e)))
                return EXIT_FENCED
            except (InvariantViolation, store.CorruptWrite) as e:
                # Money is at stake: stop loudly rather than guess. Nothing of the batch committed.
                log.critical("stopping: invariant", extra=kv(shard=shard, error=str(e)))
                return EXIT_CORRUPT
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as e:
                # Lost Postgres or NATS: rebuild from what is committed and carry on as holder.
                log.warning("restarting after I/O error", extra=kv(shard=shard, error=repr(e)))
                await asyncio.sleep(RETRY_DELAY_S)
            finally:
                await committer.close()
        return 0
    finally:
        if runner is not None:
            await runner.cleanup()


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m committer")
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument(
        "--status-port", type=int, default=None,
        help="port for /metrics, /healthz, /readyz (default: committer_metrics_port + shard; 0: none)",
    )
    args = parser.parse_args(argv)
    settings = load()
    port = args.status_port
    if port is None:
        port = settings.committer_metrics_port + args.shard if settings.committer_metrics_port else 0
    setup(f"committer-{args.shard}", settings.log_level)
    sys.exit(uvloop.run(main(settings, args.shard, port)))


if __name__ == "__main__":
    cli()
