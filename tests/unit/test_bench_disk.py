"""Disk flush counting: the block device's stat line, finding the disk of a directory, strace's
summary table and the 1 ms-flush projection (no servers, a fake sysfs tree)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import disk
from bench.disk import FlushCount, ceiling_per_s, parse_device_stat, parse_strace_summary, per_accepted

# A real /sys/block/vda/stat line (Linux 6.x: 17 fields).
STAT_17 = ("   47550     5898  2598826    24595   705948   108580 23163128   175504        0    43620"
           "   221913    48540       92  1370352     5539   278579    16273\n")


def test_device_stat_field_16_is_flushes_and_17_their_milliseconds() -> None:
    assert parse_device_stat(STAT_17) == FlushCount(flushes=278579, flush_ms=16273)


def test_device_stat_without_field_16_has_no_flush_count() -> None:
    eleven = " ".join(STAT_17.split()[:11])  # kernels before 4.18
    fifteen = " ".join(STAT_17.split()[:15])  # discard fields, no flush fields (4.18 - 5.4)
    assert parse_device_stat(eleven) is None
    assert parse_device_stat(fifteen) is None
    assert parse_device_stat(" ".join(STAT_17.split()[:16])) == FlushCount(flushes=278579, flush_ms=None)


def _fake_sysfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """/sys/block/vda with partition vda1, and /sys/dev/block links to both, as the kernel has."""
    vda = tmp_path / "devices" / "virtio1" / "block" / "vda"
    (vda / "vda1").mkdir(parents=True)
    (vda / "vda1" / "partition").write_text("1\n")
    (vda / "stat").write_text(STAT_17)
    block, dev_block = tmp_path / "block", tmp_path / "dev-block"
    block.mkdir()
    dev_block.mkdir()
    (block / "vda").symlink_to(vda)
    (dev_block / "259:0").symlink_to(vda)
    (dev_block / "259:1").symlink_to(vda / "vda1")
    monkeypatch.setattr(disk, "SYS_BLOCK", block)
    monkeypatch.setattr(disk, "SYS_DEV_BLOCK", dev_block)
    return dev_block


def test_a_partition_is_counted_on_its_whole_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dev_block = _fake_sysfs(tmp_path, monkeypatch)
    assert disk.disk_of(dev_block / "259:1") == "vda"
    assert disk.disk_of(dev_block / "259:0") == "vda"
    assert disk.read_device("vda") == FlushCount(flushes=278579, flush_ms=16273)


def test_device_numbers_map_to_the_disk_or_to_nothing(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_sysfs(tmp_path, monkeypatch)
    assert disk.disk_of_dev(os.makedev(259, 1)) == "vda"  # a partition: its disk's counter
    assert disk.disk_of_dev(os.makedev(259, 0)) == "vda"
    assert disk.disk_of_dev(os.makedev(0, 52)) is None  # overlay/tmpfs: anonymous device, no sysfs entry


STRACE_C = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 71.05    0.061523          41      1474           fdatasync
 28.95    0.025066          55       455         3 fsync
------ ----------- ----------- --------- --------- ----------------
100.00    0.086589          44      1929         3 total
"""


def test_strace_summary_sums_fsync_and_fdatasync_calls() -> None:
    assert parse_strace_summary(STRACE_C) == 1474 + 455
    assert parse_strace_summary("") == 0  # detached before any call: strace prints an empty table


def test_flushes_per_accepted_purchase() -> None:
    assert per_accepted(50, 1000) == 0.05
    assert per_accepted(None, 1000) is None
    assert per_accepted(10, 0) is None


def test_ceiling_of_one_serial_flusher_at_1_ms() -> None:
    assert ceiling_per_s(1.0) == 1000.0  # a flush per purchase: 1,000/s
    assert ceiling_per_s(0.05) == pytest.approx(20_000.0)  # the SPEC's 0.05 flushes: 20 purchases a flush
    assert ceiling_per_s(0.5, flush_ms=2.0) == 1000.0
    assert ceiling_per_s(None) is None
    assert ceiling_per_s(0.0) is None  # no flushes measured: no bound from the disk
