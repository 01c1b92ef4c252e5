"""How many disk flushes a phase cost: the block device's flush counter, or strace as a fallback.

Every fsync/fdatasync that reaches the disk (nats-server's, Postgres's, Redis's, and the
filesystem journal's commit that an fsync forces) ends as a flush request of the block device
holding the data directory; the kernel counts them in field 16 of /sys/block/<dev>/stat and
the time spent flushing in field 17. Reading the counter costs nothing and needs no cooperation
from the servers, but it counts *every* process on the device: on a box shared with other work
the figures include theirs (the harness reports the idle rate just before each phase as the
noise floor).

Without a block device (overlay, tmpfs) or without field 16 (kernels before 5.5), the fallback
counts fsync/fdatasync calls per process with `strace -f -c`; strace stops the traced process on
every system call, so throughput measured with it is not comparable with a run without it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

Source = Literal["device", "strace", "none"]
SYS_BLOCK = Path("/sys/block")
SYS_DEV_BLOCK = Path("/sys/dev/block")
FLUSH_IOS_FIELD = 16  # 1-based, Documentation/block/stat.rst: flush requests completed
FLUSH_TICKS_FIELD = 17  # milliseconds spent flushing
FSYNC_SYSCALLS = ("fsync", "fdatasync")


class FlushCount(msgspec.Struct, kw_only=True):
    """Flush requests completed and milliseconds spent on them (device counter)."""

    flushes: int
    flush_ms: int | None = None


def parse_device_stat(text: str) -> FlushCount | None:
    """Field 16 (and 17) of a /sys/block/<dev>/stat line; None when the kernel has no field 16."""
    fields = text.split()
    if len(fields) < FLUSH_IOS_FIELD:
        return None
    ticks = int(fields[FLUSH_TICKS_FIELD - 1]) if len(fields) >= FLUSH_TICKS_FIELD else None
    return FlushCount(flushes=int(fields[FLUSH_IOS_FIELD - 1]), flush_ms=ticks)


def disk_of(sys_dev_entry: Path) -> str:
    """The whole disk's name for a /sys/dev/block/MAJ:MIN entry: a partition's parent (vda1 ->
    vda), else the device itself."""
    real = sys_dev_entry.resolve()
    if (real / "partition").exists():
        return real.parent.name
    return real.name


def block_device_of(path: Path) -> str | None:
    """Name under /sys/block of the disk holding `path`, or None (overlay, tmpfs, no sysfs)."""
    return disk_of_dev(os.stat(path).st_dev)


def disk_of_dev(dev: int) -> str | None:
    """The same for a device number (st_dev): /sys/dev/block/MAJ:MIN, then its whole disk."""
    entry = SYS_DEV_BLOCK / f"{os.major(dev)}:{os.minor(dev)}"
    if not entry.exists():
        return None
    name = disk_of(entry)
    return name if (SYS_BLOCK / name / "stat").exists() else None


def read_device(device: str) -> FlushCount | None:
    try:
        return parse_device_stat((SYS_BLOCK / device / "stat").read_text())
    except OSError:
        return None


def parse_strace_summary(text: str) -> int:
    """fsync + fdatasync calls in the table `strace -c` prints when it detaches.

    Rows look like `100.00    0.000123          12        10         1 fdatasync` (the errors
    column may be empty): the calls are the fourth column.
    """
    calls = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in FSYNC_SYSCALLS:
            calls += int(parts[3])
    return calls


def strace_available() -> bool:
    return shutil.which("strace") is not None


@dataclass
class Probe:
    """Where this run's flush figures come from; `open_window()` starts counting one phase."""

    source: Source
    device: str | None = None
    why: str = ""  # what the report says about the source

    @classmethod
    def choose(cls, data_dir: Path, wanted: Literal["auto", "device", "strace", "none"]) -> Probe:
        device = block_device_of(data_dir)
        first = read_device(device) if device else None
        if wanted in ("auto", "device") and device and first is not None:
            return cls("device", device, f"block device {device}: /sys/block/{device}/stat field "
                       f"{FLUSH_IOS_FIELD} (every process on the device, not only the bench's)")
        missing = (f"{data_dir} is not on a block device" if device is None
                   else f"/sys/block/{device}/stat has no field {FLUSH_IOS_FIELD}")
        if wanted == "device":
            raise RuntimeError(f"no device flush counter: {missing}")
        if wanted in ("auto", "strace") and strace_available():
            lead = "" if wanted == "strace" else f"no device flush counter ({missing}); "
            return cls("strace", device, lead + "fsync+fdatasync calls per process from `strace -f -c` "
                       "(strace slows the traced processes: throughput is not comparable)")
        if wanted == "strace":
            raise RuntimeError("strace not installed (apt-get install strace)")
        return cls("none", device, f"no flush counts: {missing}, and strace is not installed"
                   if wanted == "auto" else "flush counting turned off (--flushes none)")


class FlushFigures(msgspec.Struct, kw_only=True):
    """One phase's flushes, from the load's start to the end of its drain."""

    source: Source
    flushes: int | None = None  # device: all flushes of the disk; strace: sum over processes
    by_process: dict[str, int] = {}  # strace only
    window_s: float = 0.0
    flush_ms: int | None = None  # device: time the disk spent flushing
    idle_per_s: float | None = None  # device: flushes/s just before the load (the noise floor)


class Window:
    """Counting over one phase: `attach()` before the load (strace takes a moment to attach to
    every thread), `start()` at the load's start, `stop()` after the drain."""

    def __init__(self, probe: Probe, pids_by_name: dict[str, list[int]]) -> None:
        self.probe = probe
        self.pids_by_name = pids_by_name
        self._before: FlushCount | None = None
        self._idle: tuple[FlushCount, float] | None = None
        self._straces: dict[str, tuple[asyncio.subprocess.Process, Path]] = {}
        self._t0 = 0.0

    def mark_idle(self, now_s: float) -> None:
        """Called some time before the load: the flushes until start() are the idle rate."""
        if self.probe.source == "device" and self.probe.device:
            got = read_device(self.probe.device)
            if got is not None:
                self._idle = (got, now_s)

    def start(self, now_s: float) -> None:
        self._t0 = now_s
        if self.probe.source == "device" and self.probe.device:
            self._before = read_device(self.probe.device)

    async def attach(self, out_dir: Path) -> None:
        if self.probe.source == "strace":
            for name, pids in self.pids_by_name.items():
                if not pids:
                    continue
                out = out_dir / f"strace-{name}-{os.getpid()}-{id(self)}.txt"
                args = ["strace", "-f", "-c", "-e", "trace=" + ",".join(FSYNC_SYSCALLS), "-o", str(out)]
                for pid in pids:
                    args += ["-p", str(pid)]
                proc = await asyncio.create_subprocess_exec(
                    *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                self._straces[name] = (proc, out)
            await asyncio.sleep(0.5)  # attaching to every thread takes a moment

    async def stop(self, now_s: float) -> FlushFigures:
        fig = FlushFigures(source=self.probe.source, window_s=round(now_s - self._t0, 2))
        if self.probe.source == "device" and self.probe.device and self._before is not None:
            after = read_device(self.probe.device)
            if after is not None:
                fig.flushes = after.flushes - self._before.flushes
                if after.flush_ms is not None and self._before.flush_ms is not None:
                    fig.flush_ms = after.flush_ms - self._before.flush_ms
            if self._idle is not None:
                idle, t = self._idle
                if self._t0 - t > 0.2:
                    fig.idle_per_s = round((self._before.flushes - idle.flushes) / (self._t0 - t), 1)
        elif self.probe.source == "strace":
            for name, (proc, out) in self._straces.items():
                if proc.returncode is None:
                    proc.send_signal(signal.SIGINT)  # detach: strace prints its summary
                await proc.wait()
                try:
                    fig.by_process[name] = parse_strace_summary(out.read_text())
                    out.unlink()
                except OSError:
                    pass
            fig.flushes = sum(fig.by_process.values())
        return fig


def per_accepted(flushes: int | None, accepted: int) -> float | None:
    if flushes is None or accepted <= 0:
        return None
    return flushes / accepted


def ceiling_per_s(flushes_per_purchase: float | None, flush_ms: float = 1.0) -> float | None:
    """Purchases/s one serial flusher allows when every flush takes `flush_ms`: each purchase
    costs flushes_per_purchase x flush_ms of flushing, and flushes do not overlap."""
    if flushes_per_purchase is None or flushes_per_purchase <= 0 or flush_ms <= 0:
        return None
    return 1000.0 / (flushes_per_purchase * flush_ms)
