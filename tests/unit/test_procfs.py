"""Processes as /proc shows them, with real child processes: alive or a zombie, found by their
command line or working directory, and ended (SIGTERM, then SIGKILL for one that ignores it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from launch import procfs

IGNORES_TERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('up', flush=True); time.sleep(60)")


@pytest.fixture
def sleeper(tmp_path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"], cwd=tmp_path)
    yield proc
    proc.kill()
    proc.wait()


def test_this_process_is_alive_and_named():
    assert procfs.alive(os.getpid()) and procfs.proc_state(os.getpid()) in ("R", "S")
    assert procfs.comm(os.getpid()) == procfs.comm(os.getpid())  # readable
    assert procfs.proc_state(2**22 + 1) is None and procfs.comm(2**22 + 1) is None


def test_an_exited_child_is_a_zombie_until_reaped(sleeper):
    sleeper.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while procfs.proc_state(sleeper.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert procfs.proc_state(sleeper.pid) == "Z" and not procfs.alive(sleeper.pid)
    procfs.reap(sleeper.pid)
    assert procfs.proc_state(sleeper.pid) is None


def test_processes_are_found_by_their_working_directory_or_command_line(sleeper, tmp_path):
    assert procfs.is_running("sleep", sleeper.pid)
    assert sleeper.pid in procfs.live_pids("sleep", where=tmp_path)
    assert sleeper.pid in procfs.live_pids("sleep", argv=["sleep", "60"])
    assert sleeper.pid not in procfs.live_pids("sleep", argv=["sleep", "61"])
    assert sleeper.pid not in procfs.live_pids("sleep", where=tmp_path / "elsewhere")


def test_ending_a_process_leaves_nothing_behind(sleeper):
    procfs.end([sleeper.pid], signal.SIGTERM, grace_s=10)
    assert not procfs.alive(sleeper.pid)  # gone, or a zombie about to be reaped


def test_one_that_ignores_term_gets_kill_after_the_grace():
    proc = subprocess.Popen([sys.executable, "-c", IGNORES_TERM], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        procfs.end([proc.pid], signal.SIGTERM, grace_s=0.2)
        assert not procfs.alive(proc.pid)  # only SIGKILL ends it
    finally:
        proc.kill()
        proc.wait()


def test_waiting_for_processes_that_stay_times_out(sleeper):
    assert not procfs.wait_gone([sleeper.pid], timeout_s=0.05)
    assert procfs.wait_gone([], timeout_s=0)
