"""The Procfile -> supervisord.conf translation that `flashsale dev` and `flashsale
supervisord-conf` run on."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import time

import pytest

from config.errors import SettingsError
from config.settings import REPO_ROOT, load
from flashsale.supervision import (
    PRIORITY,
    AlreadyRunning,
    Program,
    app_programs,
    committer_shards,
    end_groups,
    hold_data_dir,
    ingest_count,
    procfile_programs,
    shell_command,
    with_ingests,
    write_conf,
)


def test_procfile_lines_become_programs_and_comments_do_not(tmp_path):
    procfile = tmp_path / "Procfile"
    procfile.write_text("# a comment: not a process\n\nweb: python -m ingest --url http://x:1\n"
                        "committer0:   python -m committer --shard 0  \n")
    assert procfile_programs(procfile) == [
        Program("web", "python -m ingest --url http://x:1"),
        Program("committer0", "python -m committer --shard 0"),
    ]


def test_the_repository_procfile_runs_one_committer_per_default_shard():
    names = [p.name for p in procfile_programs(REPO_ROOT / "Procfile")]
    assert names == ["ingest", "committer0", "committer1", "gateway", "fakepsp"]


def test_conf_restarts_every_program_and_starts_servers_before_the_app(tmp_path):
    servers = [Program("nats", "nats-server -c a.conf"), Program("postgres", "postgres", "INT")]
    app = [Program("ingest", "python -m ingest --rate 50%")]
    conf = configparser.RawConfigParser()
    conf.read(write_conf(tmp_path, servers, app))
    nats, postgres, ingest = conf["program:nats"], conf["program:postgres"], conf["program:ingest"]
    # Restarted whatever the exit, except the committer's "invariant at stake" code 4.
    assert [(s["autorestart"], s["exitcodes"]) for s in (nats, postgres, ingest)] == [("unexpected", "4")] * 3
    assert (nats["autostart"], ingest["autostart"]) == ("true", "false")
    assert int(nats["priority"]) < int(ingest["priority"])  # started first, stopped last
    assert int(postgres["priority"]) == PRIORITY["server"]  # whatever their command line
    assert postgres["stopsignal"] == "INT"
    # A shell runs the Procfile line and execs it; % is escaped for supervisord's expansion. It
    # gets SIGTERM should supervisord die (setpriv --pdeathsig), so it never serves unwatched.
    argv = shlex.split(ingest["command"].replace("%%", "%"))
    assert argv[-3:] == ["/bin/sh", "-c", "exec python -m ingest --rate 50%"]
    if shutil.which("setpriv"):
        assert argv[:-3] == [shutil.which("setpriv"), "--pdeathsig", "TERM", "--"]
    assert conf["supervisorctl"]["serverurl"] == f"unix://{tmp_path / 'supervisor.sock'}"


def test_production_conf_starts_the_app_at_once(tmp_path):
    conf = configparser.RawConfigParser()
    conf.read(write_conf(tmp_path, [], [Program("ingest", "python -m ingest")], app_autostart=True))
    assert conf["program:ingest"]["autostart"] == "true"
    assert not [s for s in conf.sections() if s in ("program:nats", "program:postgres")]


def test_a_simple_line_is_execd_and_a_compound_one_keeps_its_shell():
    assert shell_command("python -m ingest") == "/bin/sh -c 'exec python -m ingest'"
    for line in ("sleep 1; python -m ingest", "a && b", "PORT=1 python -m ingest", "(cd x && y)"):
        assert shlex.split(shell_command(line)) == ["/bin/sh", "-c", line]


def test_programs_stop_in_dependency_order():
    app = procfile_programs(REPO_ROOT / "Procfile")
    roles = {p.name: p.runs_as for p in app}
    assert roles == {"ingest": "ingest", "committer0": "committer", "committer1": "committer",
                     "gateway": "gateway", "fakepsp": "other"}
    # supervisord stops the highest priority first: ingest, gateway, committers, PSP, servers.
    order = ["ingest", "gateway", "committer", "other", "server"]
    assert sorted(order, key=lambda r: -PRIORITY[r]) == order
    assert Program("x", "python -m gateway.fakepsp --port 1").runs_as == "other"
    assert Program("x", "/venv/bin/python -m gateway --metrics-port 9200").ports == [9200]


def test_each_ingest_line_runs_as_many_processes_each_with_its_own_metrics_port(tmp_path):
    app = [Program("ingest", "python -m ingest"), Program("committer0", "python -m committer --shard 0")]
    assert with_ingests(app, 1, 9180) == app  # one process: the line as it is
    three = with_ingests(app, 3, 9180)
    assert [(p.name, p.runs_as, p.ports) for p in three] == [
        ("ingest", "ingest", [9180]), ("ingest-2", "ingest", [9181]), ("ingest-3", "ingest", [9182]),
        ("committer0", "committer", [])]
    # Each one's port reaches its process through supervisord's environment line.
    conf = configparser.RawConfigParser()
    conf.read(write_conf(tmp_path, [], three))
    assert conf["program:ingest-3"]["environment"] == 'FLASHSALE_INGEST_METRICS_PORT="9182"'
    assert "environment" not in conf["program:committer0"]
    # No /metrics (port 0) stays none for every process.
    assert [p.ports for p in with_ingests(app, 2, 0)] == [[], [], []]


def test_ingest_processes_default_to_the_cores_and_can_be_set(tmp_path, monkeypatch):
    for cores, ingests in [(1, 1), (2, 1), (4, 1), (8, 2), (16, 4)]:
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert ingest_count(load(env={}, file=None)) == ingests
    assert ingest_count(load(env={}, file=None, ingest_processes=3)) == 3
    with pytest.raises(SettingsError, match="ingest_processes"):
        ingest_count(load(env={}, file=None, ingest_processes=-1))
    procfile = tmp_path / "Procfile"
    procfile.write_text("ingest: python -m ingest\ngateway: python -m gateway --metrics-port 9200\n")
    names = [p.name for p in app_programs(procfile, load(env={}, file=None, ingest_processes=2,
                                                         ingest_metrics_port=9180))]
    assert names == ["ingest", "ingest-2", "gateway"]


def test_extra_committer_lines_for_a_shard_are_its_standbys():
    app = [Program("committer0", "python -m committer --shard 0"),
           Program("committer1", "python -m committer --shard 1"),
           Program("committer0-standby", "python -m committer --shard 0 --status-port 9310"),
           Program("gateway", "python -m gateway")]
    assert committer_shards(app) == {0: ["committer0", "committer0-standby"], 1: ["committer1"]}


def test_one_run_per_data_directory(tmp_path):
    held = hold_data_dir(tmp_path / "data")
    with pytest.raises(AlreadyRunning, match=rf"pid {os.getpid()}\b"):
        hold_data_dir(tmp_path / "data")
    held.close()
    hold_data_dir(tmp_path / "data").close()  # free again once the holder is gone


def test_end_groups_terms_then_kills_what_stays():
    polite = subprocess.Popen(["sleep", "60"], start_new_session=True)
    # A shell that ignores SIGTERM, and its child in the same group.
    stubborn = subprocess.Popen(["/bin/sh", "-c", "trap '' TERM; sleep 60 & wait"], start_new_session=True)
    time.sleep(0.2)
    killed = end_groups({"polite": polite.pid, "stubborn": stubborn.pid, "gone": 2 ** 22 + 1},
                        grace_s=1)
    assert killed == ["stubborn"]
    assert polite.wait(5) == -15 and stubborn.wait(5) == -9
