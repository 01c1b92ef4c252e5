"""The Procfile -> supervisord.conf translation that `flashsale dev` and `flashsale
supervisord-conf` run on."""

from __future__ import annotations

import configparser
import shlex

from config.settings import REPO_ROOT
from flashsale.supervision import APP_GROUP, Program, procfile_programs, shell_command, write_conf


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
    assert postgres["stopsignal"] == "INT"
    assert conf[f"group:{APP_GROUP}"]["programs"] == "ingest"
    # A shell runs the Procfile line and execs it; % is escaped for supervisord's expansion.
    assert shlex.split(ingest["command"].replace("%%", "%")) == [
        "/bin/sh", "-c", "exec python -m ingest --rate 50%"]
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
