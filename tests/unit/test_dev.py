"""`flashsale dev`'s own decisions, against a fake supervisord: the settings and environment
every program gets, waits that end when supervisord dies or time runs out, the durability it
insists on, and what it does when supervisord dies under it."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import pytest

from config.settings import load
from flashsale.supervision import Program, hold_data_dir
from launch import dev
from launch.dev import DevError, Run, dev_settings, process_env

SETTINGS = load(env={}, file=None, nats_monitor_url="", require_sync_always=True)
NATS = Program("nats", "python -m launch embedded-nats", role="server")


class FakeSupervisord:
    """A supervisord process that exits after `polls` looks (None: never)."""

    def __init__(self, polls: int | None = None, returncode: int = 0) -> None:
        self.polls, self.code = polls, returncode
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.polls is not None:
            self.polls -= 1
            if self.polls < 0:
                self.returncode = self.code
        return self.returncode


class FakeSupervisor:
    def __init__(self, states: dict[str, tuple[str, int]]) -> None:
        self.states_now = states

    def states(self) -> dict[str, tuple[str, int]]:
        return self.states_now


def a_run(supervisord: FakeSupervisord, servers: list[Program] | None = None,
          states: dict[str, tuple[str, int]] | None = None) -> Run:
    return Run(SETTINGS, servers or [], [], supervisord, FakeSupervisor(states or {}), {})  # type: ignore[arg-type]


def test_a_local_cluster_gets_replicated_streams_and_no_fsync_demand(tmp_path):
    args = argparse.Namespace(nats_cluster=5)
    settings, servers = dev_settings(args, SETTINGS, tmp_path)
    assert [p.name for p in servers][:5] == [f"nats-n{i}" for i in range(1, 6)]
    assert (settings.stream_replicas, settings.require_sync_always) == (3, False)
    settings, _ = dev_settings(argparse.Namespace(nats_cluster=1), SETTINGS, tmp_path)
    assert (settings.stream_replicas, settings.require_sync_always) == (SETTINGS.stream_replicas, True)


def test_programs_get_the_settings_but_not_the_superusers_url(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin")
    settings = load(env={}, file=None, database_admin_url="postgresql://postgres:secret@h/db")
    env = process_env(settings)
    assert "FLASHSALE_DATABASE_ADMIN_URL" not in env and env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].endswith(":/usr/bin") and env["FLASHSALE_SHARDS"] == str(settings.shards)


def test_a_wait_ends_when_ready():
    answers = iter([False, False, True])
    a_run(FakeSupervisord()).wait_until(lambda: next(answers), "x", timeout_s=10)


def test_a_wait_ends_when_supervisord_exits(monkeypatch):
    monkeypatch.setattr(dev, "WAIT_POLL_INTERVAL_S", 0.001)
    with pytest.raises(DevError, match="supervisord exited with 3 while waiting for nats-server"):
        a_run(FakeSupervisord(polls=2, returncode=3)).wait_until(lambda: False, "nats-server", 10)


def test_a_wait_ends_at_its_timeout(monkeypatch):
    monkeypatch.setattr(dev, "WAIT_POLL_INTERVAL_S", 0.001)
    with pytest.raises(DevError, match=r"PostgreSQL not up after 0\.05 s"):
        a_run(FakeSupervisord()).wait_until(lambda: False, "PostgreSQL", 0.05)


def test_pids_of_running_programs_are_remembered():
    run = a_run(FakeSupervisord(), states={"ingest": ("RUNNING", 41), "gateway": ("BACKOFF", 0)})
    assert run.program_pids()["gateway"] == ("BACKOFF", 0)
    assert run.groups == {"ingest": 41}


def test_our_own_nats_server_must_prove_it_syncs_every_write():
    # No monitor URL: the embedded server cannot be asked, so dev refuses to serve.
    with pytest.raises(DevError, match="refusing to serve: not verified"):
        dev._check_durability(a_run(FakeSupervisord(), servers=[NATS]))
    dev._check_durability(a_run(FakeSupervisord()))  # an external one without a URL: said, not refused


def test_supervisords_death_is_said_and_exits_non_zero(monkeypatch, capsys):
    monkeypatch.setattr(dev, "WATCH_S", 0.001)
    run = a_run(FakeSupervisord(polls=3, returncode=-signal.SIGKILL), states={"ingest": ("RUNNING", 7)})
    assert dev._watch(run) == 1
    assert run.groups == {"ingest": 7}
    assert "supervisord was killed by SIGKILL" in capsys.readouterr().err


def test_a_data_directory_another_dev_holds_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLASHSALE_DATA_DIR", str(tmp_path))
    held = hold_data_dir(Path(tmp_path).resolve())
    try:
        args = argparse.Namespace(nats_cluster=1, procfile="Procfile", sale="")
        assert dev.cmd_dev(args) == 2
    finally:
        held.close()
    assert "refusing to start" in capsys.readouterr().err
