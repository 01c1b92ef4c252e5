"""CPU over a load window: by process group, the generators (children), the harness itself and
the whole box (busy and steal)."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import psutil


class CpuTimes(Protocol):
    """psutil.cpu_times(): a named tuple of seconds whose fields depend on the platform."""

    @property
    def idle(self) -> float: ...

    def __iter__(self) -> Iterator[float]: ...


def box_usage(before: CpuTimes, after: CpuTimes) -> tuple[float | None, float | None]:
    """(busy %, steal %) of the whole box between two psutil.cpu_times() snapshots."""
    total = sum(after) - sum(before)
    if total <= 0:
        return None, None
    iowait_s = getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0)
    idle = (after.idle - before.idle) + iowait_s
    steal = getattr(after, "steal", 0.0) - getattr(before, "steal", 0.0)
    return round(100 * (total - idle - steal) / total, 1), round(100 * steal / total, 1)


def children_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def self_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


@dataclass
class CpuMark:
    """CPU counters at the load's common start instant, to charge the load window with."""

    groups: dict[str, list[int]]
    before: dict[str, dict[int, float]]
    children_s: float
    self_s: float
    box: CpuTimes

    @classmethod
    def take(cls, groups: dict[str, list[int]]) -> CpuMark:
        return cls(groups, {name: cpu_snapshot(pids) for name, pids in groups.items()},
                   children_cpu(), self_cpu(), psutil.cpu_times())

    def usage(self, wall_s: float) -> tuple[dict[str, float], float | None, float | None]:
        """(% of one core by process group, box busy %, steal %) since the mark."""
        after = {name: cpu_snapshot(pids) for name, pids in self.groups.items()}
        cpu = {n: round(100 * cpu_delta(self.before[n], after[n]) / wall_s, 1) for n in after}
        cpu["generator"] = round(100 * (children_cpu() - self.children_s) / wall_s, 1)
        cpu["bench harness"] = round(100 * (self_cpu() - self.self_s) / wall_s, 1)
        box_busy, steal = box_usage(self.box, psutil.cpu_times())
        return cpu, box_busy, steal


def cpu_snapshot(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) per process: these processes and their live descendants.

    Key -pid holds what a root has collected from its children that already exited (postgres
    reaps its backends and autovacuum workers), so a process that ends during a phase still
    counts: see cpu_delta.
    """
    out: dict[int, float] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            t = root.cpu_times()
            out[-pid] = t.children_user + t.children_system
            for q in [root, *root.children(recursive=True)]:
                try:
                    t = q.cpu_times()
                    out[q.pid] = t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two snapshots. A process gone by `after` shows up again, whole, in
    its root's reaped-children total, so what it had used before the phase is taken off; a new
    process counts from zero."""
    gone = sum(v for k, v in before.items() if k > 0 and k not in after)
    return sum(v - before.get(k, 0.0) for k, v in after.items()) - gone
