"""What storing intents in JetStream costs with `sync_interval: always`, per way of publishing.

    python -m bench.nats_batches [--sizes 1,16,64,256] [--inflight 1,2] [--seconds 2]

An embedded nats-server (the same config as `make run`, so it fsyncs before every ack) and the
real intents stream of shard 0; nothing else runs. Per way and batch size, for `--seconds`:
intents stored per second, the time from the first publish of a batch to its ack, the block
device's flushes per batch (field 16 of /sys/block/<dev>/stat; every process on the disk counts,
so run it on a quiet box) and nats-server's CPU per intent.

- `single`: one publish per intent, each awaiting its ack (ingest's fallback when a stream takes
  no atomic batches);
- `atomic`: one JetStream atomic batch per `size` intents, each on its own subject (what ingest
  does);
- `atomic-tmpfs`: the same, with the stream's `batches/` staging directory linked to tmpfs (an
  experiment, not something to deploy: nats-server removes the link when it restarts). nats-server
  stages an R1 file-storage batch in a file store of its own before committing it (directories, two
  metadata files written with O_SYNC, directory fsyncs, a flush of the staged block, then the real
  write and its fsync, then a delete); this isolates what that staging costs;
- `packed`: the `size` intents packed into one message (the design that keeps one flush per
  batch without the staging; see docs/architecture.md for what it would change).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
import nats
import psutil
import uvloop

from bench.disk import block_device_of, read_device
from config.settings import load
from flashsale.embedded import Embedded, start_nats
from flashsale.jetstream import ensure_streams
from ingest.publisher import Publisher
from proto.messages import Purchase, encode
from proto.subjects import Names

Way = Literal["single", "atomic", "atomic-tmpfs", "packed"]
WAYS: tuple[Way, ...] = ("single", "atomic", "atomic-tmpfs", "packed")


@dataclass(frozen=True)
class Figures:
    way: Way
    size: int
    inflight: int
    intents_per_s: float
    batch_p50_ms: float
    batch_p99_ms: float
    flushes_per_batch: float | None
    server_cpu_us_per_intent: float


class Run:
    """One nats-server and its streams; `measure` publishes one way and size for a while."""

    def __init__(self, server: Embedded, names: Names, publisher: Publisher, device: str | None,
                 stream_dir: Path) -> None:
        self.server = server
        self.names = names
        self.publisher = publisher
        self.device = device
        self.stream_dir = stream_dir
        self.ids = 0

    def _intent(self) -> tuple[str, bytes, str]:
        self.ids += 1
        pid = f"p{self.ids:031d}"
        body = encode(Purchase(id=pid, sku="hot", qty=1, user_id=f"buyer-{self.ids}",
                               request_hash="h" * 32, accepted_at_ms=int(time.time() * 1000)))
        return self.names.intent(0, "purchase", pid), body, pid

    async def _one_batch(self, way: Way, size: int) -> None:
        items = [self._intent() for _ in range(size)]
        if way == "single":
            await asyncio.gather(*(self.publisher.publish(*item) for item in items))
        elif way == "packed":
            packed = msgspec.msgpack.encode([payload for _, payload, _ in items])
            subject = self.names.intent(0, "purchase", f"batch{self.ids:028d}")
            await self.publisher.publish(subject, packed, f"batch-{self.ids}")
        elif size == 1:
            await self.publisher.publish(*items[0])
        else:
            await self.publisher.publish_batch(items)

    async def measure(self, way: Way, size: int, inflight: int, seconds: float) -> Figures:
        if way == "atomic-tmpfs":
            _stage_in_tmpfs(self.stream_dir)
        latencies: list[float] = []
        stored = 0
        server = psutil.Process(self.server.proc.pid)
        cpu0 = server.cpu_times()
        flushes0 = read_device(self.device) if self.device else None
        started = time.perf_counter()

        async def publisher_loop() -> None:
            nonlocal stored
            while time.perf_counter() - started < seconds:
                sent = time.perf_counter()
                await self._one_batch(way, size)
                latencies.append(time.perf_counter() - sent)
                stored += size

        await asyncio.gather(*(publisher_loop() for _ in range(inflight)))
        elapsed = time.perf_counter() - started
        cpu1 = server.cpu_times()
        flushes1 = read_device(self.device) if self.device else None
        latencies.sort()
        per_batch = None
        if flushes0 is not None and flushes1 is not None:
            per_batch = (flushes1.flushes - flushes0.flushes) / len(latencies)
        cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        return Figures(way, size, inflight, stored / elapsed,
                       1000 * latencies[len(latencies) // 2], 1000 * latencies[int(len(latencies) * 0.99)],
                       per_batch, 1e6 * cpu_s / stored)


HEADER = ("way           size  inflight  intents/s  batch p50 ms  batch p99 ms  flushes/batch  "
          "flushes/intent  nats-server CPU us/intent")


def _row(f: Figures) -> str:
    per_batch = per_intent = "-"
    if f.flushes_per_batch is not None:
        per_batch, per_intent = f"{f.flushes_per_batch:.2f}", f"{f.flushes_per_batch / f.size:.3f}"
    return (f"{f.way:<12} {f.size:>5} {f.inflight:>9} {f.intents_per_s:>10,.0f} {f.batch_p50_ms:>13.2f} "
            f"{f.batch_p99_ms:>13.2f} {per_batch:>14} {per_intent:>15} {f.server_cpu_us_per_intent:>26.1f}")


def _stage_in_tmpfs(stream_dir: Path) -> None:
    """Link the stream's batch staging directory to tmpfs (the server creates it on first use)."""
    staging = stream_dir / "batches"
    if staging.is_symlink():
        return
    if staging.exists():
        os.rename(staging, stream_dir / f".batches-{time.monotonic_ns()}")
    staging.symlink_to(tempfile.mkdtemp(prefix="nats-batches-", dir="/dev/shm"))


async def main(args: argparse.Namespace) -> list[Figures]:
    data_dir = Path(tempfile.mkdtemp(prefix="nats-batches-", dir=args.dir))
    server = start_nats(data_dir)
    try:
        settings = load(env={"NATS_URL": server.url, "FLASHSALE_SHARDS": "1",
                             "FLASHSALE_INTENTS_MAX_BYTES": str(1 << 30)})
        nc = await nats.connect(server.url)
        await ensure_streams(nc.jetstream(), settings)
        names = settings.names
        stream_dir = next((data_dir / "jetstream").glob(f"*/*/streams/{names.intents_stream(0)}"))
        run = Run(server, names, await Publisher.start(nc, 100_000), block_device_of(data_dir), stream_dir)
        print(HEADER, flush=True)
        results = []
        for way in args.ways:
            for size in args.sizes:
                for inflight in args.inflight:
                    if way == "single" and inflight > 1:
                        continue  # a 'single' batch already has `size` publishes in flight
                    f = await run.measure(way, size, inflight, args.seconds)
                    results.append(f)
                    print(_row(f), flush=True)
        await nc.close()
        return results
    finally:
        server.stop()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ways", type=lambda s: [w for w in s.split(",") if w in WAYS], default=list(WAYS))
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64, 256])
    ap.add_argument("--inflight", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--dir", default=None, help="where the server's store goes (default: the temp dir)")
    return ap.parse_args()


if __name__ == "__main__":
    uvloop.run(main(parse_args()))
