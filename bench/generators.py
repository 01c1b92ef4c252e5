"""The load generator processes of a phase: Python generators (`bench.loadgen`), whose
per-second lines feed a live progress line on stderr, and wrk (closed loop, bench/wrk/purchases.lua)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from bench.genspec import GenSpec
from bench.systems import System

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "purchases.lua"


class GenLine(msgspec.Struct):
    """A generator's per-second progress line (bench.loadgen's `progress`)."""

    n: int = 0  # answers in the last second
    sent: int = 0
    err: int = 0
    p99: float | None = None  # ms, of the last second's answers


class WrkLatencyUs(msgspec.Struct):
    p50: float
    p95: float
    p99: float
    max: float
    mean: float


class WrkResult(msgspec.Struct):
    """The `WRK_JSON` line bench/wrk/purchases.lua prints when wrk is done."""

    requests: int
    duration_us: int
    errors: dict[str, int]  # connect, read, write, timeout, status (= non-2xx answers)
    latency_us: WrkLatencyUs
    statuses: dict[str, int]
    seconds: dict[int, int]  # unix second -> answers
    ids: list[str]
    repeated: int = 0  # requests past the tokens file's end (retries of earlier clicks)


_decode_gen_line = msgspec.json.Decoder(GenLine).decode
_decode_wrk = msgspec.json.Decoder(WrkResult).decode


@dataclass
class Live:
    """What the progress line shows; fed by the generators' per-second lines."""

    label: str
    gen_lines: dict[int, GenLine] = field(default_factory=dict)

    def update(self, idx: int, line: GenLine) -> None:
        self.gen_lines[idx] = line


async def _pump(idx: int, stream: asyncio.StreamReader, live: Live, sink: list[str]) -> None:
    while True:
        raw = await stream.readline()
        if not raw:
            return
        text = raw.decode(errors="replace").strip()
        if text.startswith("{"):
            try:
                live.update(idx, _decode_gen_line(text))
                continue
            except msgspec.DecodeError:
                pass
        sink.append(text)


async def show_progress(sut: System, live: Live, started: float) -> None:
    last_count, last_t = None, time.monotonic()
    while True:
        await asyncio.sleep(1.0)
        try:
            count, backlog = await sut.live()
        except Exception:  # the live line is best effort; the phase's figures come from elsewhere
            count, backlog = None, None
        t = time.monotonic()
        rate = None if count is None or last_count is None else (count - last_count) / (t - last_t)
        last_count, last_t = count, t
        p99s = [line.p99 for line in live.gen_lines.values() if line.p99 is not None]
        errs = sum(line.err for line in live.gen_lines.values())
        print(
            f"\r\x1b[K{live.label} t={t - started:4.0f}s rate={_fmt(rate)}/s "
            f"p99={_fmt(max(p99s) if p99s else None, 1)}ms errors={errs}/s backlog={_fmt(backlog)}",
            end="", file=sys.stderr, flush=True,
        )


def _fmt(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


@dataclass
class GenProcess:
    """One Python generator process: the pump of its progress lines and its result file."""

    proc: asyncio.subprocess.Process
    pump: asyncio.Task[None]
    out: Path


async def spawn_gen(spec: GenSpec, out: Path, idx: int, live: Live, sink: list[str]) -> GenProcess:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", msgspec.json.encode(spec).decode(), str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    return GenProcess(proc, asyncio.create_task(_pump(idx, proc.stdout, live, sink)), out)


async def spawn_wrk(sut: System, tokens: Path, repeat: bool, skus: list[str], duration_s: float,
                     connections: int, start_at: float) -> asyncio.subprocess.Process:
    await asyncio.sleep(max(0.0, start_at - time.time()))
    return await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout", "10s",
        "-s", str(WRK_SCRIPT), sut.base_url, "--", str(tokens), "repeat" if repeat else "per-buyer",
        ",".join(skus), "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def parse_wrk(out: bytes) -> WrkResult | None:
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("WRK_JSON "):
            return _decode_wrk(line[len("WRK_JSON "):])
    return None
