"""CPU over a load window, against small fakes: the box's counters as hand-made tuples, the
process groups as this test's own process."""

from __future__ import annotations

import os
import time
from typing import NamedTuple

from bench.cpu import CpuMark, box_usage, cpu_snapshot


class _Times(NamedTuple):
    """psutil.cpu_times() on Linux, the fields box_usage reads."""

    user: float
    system: float
    idle: float
    iowait: float
    steal: float


def test_box_usage_counts_iowait_as_idle_and_steal_apart():
    before = _Times(user=10, system=5, idle=80, iowait=5, steal=0)
    after = _Times(user=40, system=15, idle=110, iowait=15, steal=20)  # 100 s of CPU time later
    assert box_usage(before, after) == (40.0, 20.0)  # busy = user + system; idle + iowait: 40 s
    assert box_usage(after, after) == (None, None)  # no time passed: nothing to say


def test_a_mark_charges_each_group_with_what_it_used_since():
    me = os.getpid()
    mark = CpuMark.take({"bench test": [me], "gone": [2**22 + 7]})  # a pid that does not exist
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # burn 50 ms of CPU in this process
        pass
    cpu, busy, _ = mark.usage(wall_s=0.1)
    assert cpu["bench test"] >= 40.0  # >= 40 ms of CPU in 100 ms of wall time: % of a core
    assert cpu["gone"] == 0.0
    assert {"generator", "bench harness"} <= set(cpu)
    assert busy is None or 0 <= busy <= 100
    assert cpu_snapshot([me])[me] > 0
