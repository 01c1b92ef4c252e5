"""`python -m committer --shard N`: the single writer of shard N."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import asyncpg
import uvloop

from committer import store
from committer.loop import Committer
from committer.machine import InvariantViolation
from config.settings import Settings, load
from flashsale.logs import kv, setup
from flashsale.status import serve_status

log = logging.getLogger("committer")

RETRY_DELAY_S = 1.0
EXIT_FENCED = 3
EXIT_CORRUPT = 4


async def main(settings: Settings, shard: int, status_port: int) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    current: list[Committer] = []
    runner = (
        await serve_status(status_port, lambda: bool(current) and current[0].ready)
        if status_port else None
    )
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
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
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
