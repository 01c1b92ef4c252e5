"""The launchers of the tests and the bench, with real child processes: each gets the settings
in its environment and a log of its own, stops on SIGTERM (SIGKILL if it will not), and a wait
for its readiness ends at once, with its log, when it exits."""

from __future__ import annotations

import sys
import time

import pytest

from config.settings import load
from launch.processes import (
    Process,
    committer,
    committer_ready_url,
    fakepsp_process,
    gateway_process,
    ingest_metrics_url,
    python_module,
    spare_port,
)

SETTINGS = load(env={}, file=None, committer_metrics_port=29100, shards=4, psp_api_key="k" * 32)


def test_a_process_gets_the_settings_and_not_the_config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHSALE_CONFIG", "elsewhere.toml")
    p = python_module("x", "ingest", ["--a"], SETTINGS, tmp_path / "logs", {"EXTRA": "1"})
    assert p.argv == [sys.executable, "-m", "ingest", "--a"]
    assert "FLASHSALE_CONFIG" not in p.env and p.env["EXTRA"] == "1"
    assert p.env["FLASHSALE_SHARDS"] == "4" and p.log_path == tmp_path / "logs" / "x.log"


def test_each_launcher_builds_its_command_line(tmp_path):
    c = committer(SETTINGS, 2, tmp_path, status_port=29300)
    assert (c.name, c.argv[2:]) == ("committer-2", ["committer", "--shard", "2", "--status-port", "29300"])
    assert committer_ready_url(SETTINGS, 2) == "http://127.0.0.1:29102/readyz"
    assert gateway_process(SETTINGS, tmp_path, metrics_port=29400).argv[-2:] == ["--metrics-port", "29400"]
    psp, url = fakepsp_process(SETTINGS, tmp_path, port=29500, decline_rate=0.5)
    assert url == "http://127.0.0.1:29500" and psp.env["FAKEPSP_DECLINE_RATE"] == "0.5"
    assert psp.env["FAKEPSP_API_KEY"] == SETTINGS.psp_api_key


def test_a_spare_port_is_none_the_committers_will_bind():
    taken = range(SETTINGS.committer_metrics_port, SETTINGS.committer_metrics_port + SETTINGS.shards + 1)
    assert all(spare_port(SETTINGS) not in taken for _ in range(50))


def test_an_ingest_without_a_metrics_port_has_no_metrics_url():
    with pytest.raises(ValueError):
        ingest_metrics_url(load(env={}, file=None, ingest_metrics_port=0))


def script(tmp_path, code: str) -> Process:
    return Process("p", [sys.executable, "-c", code], {}, tmp_path / "p.log")


def test_a_process_stops_on_sigterm_and_is_not_started_twice_by_stop(tmp_path):
    p = script(tmp_path, "import time; time.sleep(60)")
    assert p.stop() is None  # never started
    p.start()
    assert p.alive
    assert p.stop() == -15 and not p.alive


def test_a_process_that_ignores_sigterm_is_killed(tmp_path):
    p = script(tmp_path, "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                         "print('up', flush=True); time.sleep(60)").start()
    while "up" not in p.log_tail() and p.alive:
        time.sleep(0.01)
    assert p.stop(timeout_s=0.2) == -9


def test_a_wait_for_readiness_ends_with_the_log_when_the_process_exits(tmp_path):
    p = script(tmp_path, "print('cannot start: no config')").start()
    with pytest.raises(RuntimeError, match="p exited early:\ncannot start: no config"):
        p.wait_http_ok(f"http://127.0.0.1:{spare_port(SETTINGS)}/readyz", timeout_s=30)


def test_a_wait_for_readiness_ends_at_its_timeout(tmp_path):
    p = script(tmp_path, "import time; time.sleep(60)").start()
    try:
        with pytest.raises(TimeoutError, match="p not ready at"):
            p.wait_http_ok(f"http://127.0.0.1:{spare_port(SETTINGS)}/readyz", timeout_s=0.1)
    finally:
        p.kill9()
    assert not p.alive
