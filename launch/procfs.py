"""Processes as /proc shows them: whether one is alive, what it is called, which ones run in a
directory or with a command line, and ending them. The embedded servers use these to clear what
an earlier run left behind (a parent killed with -9 leaves its server running)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

GONE_POLL_INTERVAL_S = 0.05  # between two looks at processes that were told to end
AFTER_KILL_WAIT_S = 10.0  # for processes sent SIGKILL to be gone


def proc_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (R, S, Z, ...), None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]  # the name in parentheses may hold spaces


def alive(pid: int) -> bool:
    """kill(pid, 0) succeeds on a zombie; a zombie has exited and holds nothing but its pid."""
    return proc_state(pid) not in (None, "Z", "X")


def comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def is_running(name: str, pid: int) -> bool:
    """Process `pid` is alive and called `name`."""
    return alive(pid) and comm(pid) == name


def reap(pid: int) -> None:
    """Collect the exit status of our own exited child, so it stops being a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: whoever its parent is reaps it


def wait_gone(pids: Iterable[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            reap(pid)
            if not alive(pid):
                pending.discard(pid)
        if pending:
            time.sleep(GONE_POLL_INTERVAL_S)
    return not pending


def live_pids(name: str, where: Path | None = None, argv: list[str] | None = None) -> list[int]:
    """Live processes called `name` whose working directory is `where` or whose command line is
    `argv`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or comm(int(entry.name)) != name:
            continue
        try:
            if where is not None and Path(os.readlink(entry / "cwd")) != where:
                continue
            if argv is not None and (entry / "cmdline").read_bytes().split(b"\0")[:-1] != [
                a.encode() for a in argv
            ]:
                continue
        except OSError:
            continue  # gone meanwhile, or another user's process we may not look into
        if alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def end(pids: list[int], first: signal.Signals, grace_s: float) -> None:
    """`first` signal, then SIGKILL for whatever is still alive after `grace_s`."""
    for pid in pids:
        try:
            os.kill(pid, first)
        except ProcessLookupError:
            pass
    if wait_gone(pids, grace_s):
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not wait_gone(pids, AFTER_KILL_WAIT_S):
        raise RuntimeError(f"processes {pids} survive SIGKILL")
