"""`python -m committer --shard N`: the single writer of shard N, or a standby for it.

A process waits as a standby while another holds a live lease on the shard, then writes until it
is stopped (exit 0, lease released), fenced (exit 3) or about to break an invariant (exit 4). One
configured for another shard count than the system's shard map never claims the shard (exit 2).
Any other failure (Postgres or NATS lost, a client library in a bad state) rebuilds the writer
from Postgres with bounded backoff, as the holder of the same epoch.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

import uvloop

from committer import metrics, store
from committer.faults import with_faults
from committer.links import Health, Links, Unreachable, end_stalled_holder
from committer.recovery import (
    EXIT_CONFIG,
    EXIT_CORRUPT,
    EXIT_FENCED,
    EXIT_STOPPED,
    Backoff,
    dependency_of,
    verdict_of,
)
from committer.shard_rows import PostgresShardRows
from committer.writer import ShardWriter
from config.settings import Settings, load_or_exit
from flashsale import shardmap
from flashsale.logs import kv, setup
from flashsale.status import serve_status

log = logging.getLogger("committer")

__all__ = ["EXIT_CONFIG", "EXIT_CORRUPT", "EXIT_FENCED", "EXIT_STOPPED", "cli", "main", "parse"]

FIRST_RETRY_S = 0.1
STOP_GRACE_S = 10.0  # a writer's time to finish after SIGTERM; below supervision.STOP_WAIT_S


class Shard:
    """One process's hold on a shard across rebuilds: the epoch it holds, if any, and readiness."""

    def __init__(self, settings: Settings, shard: int) -> None:
        if not 0 <= shard < settings.shards:
            raise ValueError(f"shard {shard} outside 0..{settings.shards - 1}")
        self.settings = settings
        self.shard = shard
        self.ttl_ms = int(settings.lease_ttl_s * 1000)
        # A restarted process is a new owner: it waits for its predecessor's lease to expire.
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.epoch: int | None = None
        self.writer: ShardWriter | None = None  # the running writer, for /readyz only
        self.health = Health(shard)
        # Both reset when a writer starts.
        self.backoff = Backoff(FIRST_RETRY_S, settings.rebuild_backoff_max_s)
        self.unexpected: set[type[Exception]] = set()  # kinds of unexpected errors logged

    def ready(self) -> bool:
        return self.writer is not None and self.writer.ready

    async def claim(self, links: Links, stopping: asyncio.Event) -> int | None:
        """Our epoch: taken once the lease is free or expired (standby until then), or the one
        we held before a rebuild (Fenced if someone took it meanwhile). None: stopping."""
        if self.epoch is not None:
            await store.renew_lease(links.conn, self.shard, self.epoch, self.ttl_ms)
            self.health.back("postgres")  # it took a write, not only a connection
            return self.epoch
        waiting = False
        while not stopping.is_set():
            epoch, lease = await store.acquire_lease(links.conn, self.shard, self.owner, self.ttl_ms)
            self.health.back("postgres")  # it took a write, not only a connection
            if epoch is not None:
                if waiting:
                    log.info("standby took over", extra=kv(shard=self.shard, epoch=epoch,
                                                           previous_owner=lease.owner))
                return epoch
            if not waiting:
                log.info("standby: lease held", extra=kv(shard=self.shard, holder=lease.owner,
                                                         epoch=lease.epoch))
                waiting = True
            ended = await end_stalled_holder(links.conn, self.shard)
            if ended is not None:  # its lease expired, its session stalled holding the row
                log.warning("standby: ended a stalled holder's session",
                            extra=kv(shard=self.shard, holder=lease.owner, pid=ended))
                continue
            await _sleep_unless(stopping, self.settings.standby_poll_s)
        return None

    async def serve(self, stopping: asyncio.Event) -> None:
        """Connect, claim the lease, rebuild and write until stopped; errors propagate."""
        links = await Links.open(self.settings, self.shard, self.health)
        try:
            # Before claiming: a process configured unlike the system must not even wait as a standby.
            await shardmap.check(links.conn, self.settings.shards)
            epoch = await self.claim(links, stopping)
            if epoch is None:
                return
            self.epoch = epoch
            try:
                # Again under the lease: `flashsale reshard` changes the map only while no lease
                # is live, so the map read now holds for as long as this writer runs.
                await shardmap.check(links.conn, self.settings.shards)
            except shardmap.ShardMapError:
                await store.release_lease(links.conn, self.shard, epoch)
                raise
            rows = with_faults(self.settings,
                               PostgresShardRows(links.conn, self.shard, epoch, self.ttl_ms))
            self.writer = await ShardWriter.start(self.settings, self.shard, epoch, links, rows)
            self.backoff.reset()
            self.unexpected.clear()
            metrics.WRITER.labels(str(self.shard)).set(1)
            await self.writer.run(stopping)
            await store.release_lease(links.conn, self.shard, epoch)
            log.info("stopped, lease released", extra=kv(shard=self.shard, epoch=epoch))
        finally:
            self.writer = None
            metrics.WRITER.labels(str(self.shard)).set(0)
            await links.close()

    async def run(self, stopping: asyncio.Event) -> int:
        while not stopping.is_set():
            try:
                await self.serve(stopping)
                return EXIT_STOPPED
            except Exception as e:
                verdict = verdict_of(e)
                if verdict == "fenced":
                    log.error("stopping: fenced", extra=kv(shard=self.shard, error=str(e)))
                    return EXIT_FENCED
                if verdict == "misconfigured":
                    log.error(f"refusing to run: {e}", extra=kv(shard=self.shard))
                    return EXIT_CONFIG
                if verdict == "corrupt":
                    # Money is at stake: stop loudly rather than guess. Nothing of the batch committed.
                    log.critical("stopping: invariant", extra=kv(shard=self.shard, error=str(e)))
                    return EXIT_CORRUPT
                self._failed(e)
            await _sleep_unless(stopping, self.backoff.next_s())
        return EXIT_STOPPED

    def _failed(self, error: Exception) -> None:
        """One line per change: a dependency lost once, an unexpected error once per kind in a
        streak of failures (the streak ends when a writer starts)."""
        dependency = error.dependency if isinstance(error, Unreachable) else dependency_of(error)
        if dependency is not None:
            self.health.lost(dependency, error)
        elif type(error) not in self.unexpected:
            self.unexpected.add(type(error))
            log.warning("rebuilding after error", exc_info=error,
                        extra=kv(shard=self.shard, epoch=self.epoch))


async def _sleep_unless(stopping: asyncio.Event, delay_s: float) -> None:
    try:
        await asyncio.wait_for(stopping.wait(), delay_s)
    except TimeoutError:
        pass


async def main(settings: Settings, shard: int, status_port: int) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    hold = Shard(settings, shard)
    runner = await serve_status(status_port, hold.ready) if status_port else None
    try:
        run = asyncio.ensure_future(hold.run(stopping))
        # A SystemExit in it (credentials refused) leaves the loop at once: mark it seen.
        run.add_done_callback(lambda task: task.cancelled() or task.exception())
        await asyncio.wait([run, asyncio.ensure_future(stopping.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if not run.done():
            # Stopping: a writer finishes its batch and releases its lease; a process that holds
            # no lease (connecting, standing by) has nothing to finish. Past the grace, or stuck
            # reconnecting, it ends as after kill -9, which every step survives.
            grace_s = STOP_GRACE_S if hold.epoch is not None else 0
            done, _ = await asyncio.wait([run], timeout=grace_s)
            if not done:
                log.info("stopping without a writer to finish", extra=kv(shard=shard, epoch=hold.epoch))
                run.cancel()
                await asyncio.wait([run])
                return EXIT_STOPPED
        return run.result()
    finally:
        if runner is not None:
            await runner.cleanup()


def parse(argv: list[str] | None, settings: Settings) -> tuple[int, int]:
    """(shard, status port; 0: none) from the command line."""
    parser = argparse.ArgumentParser(prog="python -m committer")
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument(
        "--status-port", type=int, default=None,
        help="port for /metrics, /healthz, /readyz (default: committer_metrics_port + shard; 0: none)",
    )
    args = parser.parse_args(argv)
    port = args.status_port
    if port is None:
        port = settings.committer_metrics_port + args.shard if settings.committer_metrics_port else 0
    return args.shard, port


def cli(argv: list[str] | None = None) -> None:
    settings = load_or_exit("committer")
    shard, port = parse(argv, settings)
    setup(f"committer-{shard}", settings.log_level)
    sys.exit(uvloop.run(main(settings, shard, port)))


if __name__ == "__main__":
    cli()
