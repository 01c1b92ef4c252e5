"""What storing intents in JetStream costs with `sync_interval: always`, per way of publishing.

    python -m bench.nats_batches [--sizes 1,16,64,256] [--inflight 1,2] [--seconds 2]

An embedded nats-server (the same config as `make run`, so it fsyncs before every ack) and the
real intents stream of shard 0; nothing else runs. Per way and batch size, for `--seconds`:
intents stored per second, the time from the first publish of a batch to its ack, the block
device's flushes per batch (field 16 of /sys/block/<dev>/stat; every process on the disk counts,
so run it on a quiet box) and nats-server's CPU per intent.

- `single`: one publish per intent, each awaiting its ack;
- `atomic`: one JetStream atomic batch per `size` intents, each on its own subject (the stream
  gets `allow_atomic` for this run);
- `atomic-tmpfs`: the same, with the stream's `batches/` staging directory linked to tmpfs (an
  experiment, not something to deploy: nats-server removes the link when it restarts). nats-server
  stages an R1 file-storage batch in a file store of its own before committing it (directories, two
  metadata files written with O_SYNC, directory fsyncs, a flush of the staged block, then the real
  write and its fsync, then a delete); this isolates what that staging costs;
- `packed`: the `size` intents packed into one `IntentBatch` message, as ingest stores them
  (see docs/architecture.md).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nats
import psutil
import uvloop

from bench.disk import block_device_of, read_device
from config.settings import load
from flashsale.jetstream import ensure_streams
from ingest.publisher import Publisher
from launch.embedded import Embedded
from launch.nats_server import start_nats
from proto.messages import IntentBatch, Purchase, encode
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

    def _intent(self) -> Purchase:
        self.ids += 1
        pid = f"p{self.ids:031d}"
        return Purchase(id=pid, sku="hot", qty=1, user_id=f"buyer-{self.ids}",
                        request_hash="h" * 32, accepted_at_ms=int(time.time() * 1000))

    async def _one_batch(self, way: Way, size: int) -> None:
        intents = [self._intent() for _ in range(size)]
        items = [(self.names.intent(0, "purchase", p.id), encode(p), p.id) for p in intents]
        if way == "single":
            await asyncio.gather(*(self.publisher.publish(*item) for item in items))
        elif way == "packed":
            batch_id = self.publisher.new_batch_id()
            await self.publisher.publish(self.names.intent_batch(0, batch_id),
                                         encode(IntentBatch(intents=list(intents))), batch_id)
        elif size == 1:
            await self.publisher.publish(*items[0])
        else:
            await _atomic_batch(self.publisher, items)

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


async def _atomic_batch(publisher: Publisher, items: list[tuple[str, bytes, str]]) -> None:
    """Store (subject, payload, msg id) items as one JetStream atomic batch."""
    batch_id = publisher.new_batch_id()
    for seq, (subject, payload, msg_id) in enumerate(items[:-1], 1):
        await publisher.nc.publish(subject, payload, headers={
            "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(seq), "Nats-Msg-Id": msg_id,
        })
    subject, payload, msg_id = items[-1]
    ack = await publisher.nc.request(subject, payload, timeout=5.0, headers={
        "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(len(items)), "Nats-Msg-Id": msg_id,
        "Nats-Batch-Commit": "1",
    })
    if b'"error"' in ack.data:
        raise RuntimeError(f"atomic batch refused: {ack.data!r}")


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
        js = nc.jetstream()
        await ensure_streams(js, settings)
        names = settings.names
        if "atomic" in args.ways or "atomic-tmpfs" in args.ways:
            info = await js.stream_info(names.intents_stream(0))
            await js.update_stream(dataclasses.replace(info.config, allow_atomic=True))
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
