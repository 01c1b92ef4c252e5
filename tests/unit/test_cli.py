"""The `flashsale` command's table: every subcommand parses its arguments into the function that
runs it, reconcile gets its own options untouched, and every error a command may meet is one
line on stderr with its exit status."""

from __future__ import annotations

import argparse
import runpy
import sys

import pytest

from committer.schema import SchemaBusy
from config.errors import SettingsError
from flashsale import shardmap, sku_changes
from launch import cli, dev, dev_servers, operations, sales
from launch.cli import main, parse, seconds_above_0


@pytest.mark.parametrize("argv, fn, fields", [
    (["dev", "--sale", "", "--nats-cluster", "3"], dev.cmd_dev, {"sale": "", "nats_cluster": 3}),
    (["embedded-nats", "--port", "5", "--monitor-port", "6"], dev_servers.cmd_embedded_nats,
     {"port": 5, "monitor_port": 6, "data_dir": None}),
    (["embedded-nats-node", "--node", "1", "--size", "3"], dev_servers.cmd_embedded_nats_node,
     {"node": 1, "size": 3}),
    (["embedded-postgres", "--data-dir", "d"], dev_servers.cmd_embedded_postgres, {"data_dir": "d"}),
    (["supervisord-conf", "--dir", "x"], dev_servers.cmd_supervisord_conf, {"dir": "x"}),
    (["env"], dev_servers.cmd_env, {}),
    (["schema"], operations.cmd_schema, {}),
    (["purge-intents", "--dry-run", "--every", "2.5"], operations.cmd_purge_intents,
     {"dry_run": True, "every": 2.5}),
    (["reshard", "4"], operations.cmd_reshard, {"shards": 4}),
    (["load-sale", "f.toml", "--timeout-s", "3"], sales.cmd_load_sale, {"file": "f.toml", "timeout_s": 3.0}),
    (["set-sku", "hot", "--stock", "5", "--payment", "required", "--draw-window-s", "10"],
     sales.cmd_set_sku, {"sku": "hot", "stock": 5, "payment": "required", "draw_window_s": 10,
                         "price_cents": None, "timeout_s": 10.0}),
    (["verify-draw", "hot", "--id", "p1"], sales.cmd_verify_draw, {"sku": "hot", "id": "p1", "url": None}),
    (["token", "alice", "bob", "--ttl-s", "60"], sales.cmd_token, {"users": ["alice", "bob"], "ttl_s": 60}),
])
def test_each_command_parses_into_its_function(argv, fn, fields):
    args = parse(argv)
    assert args.fn is fn and args.command == argv[0]
    assert {k: getattr(args, k) for k in fields} == fields


def test_every_command_of_the_table_is_tested_above():
    sub = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {
        "dev", "embedded-nats", "embedded-nats-node", "embedded-postgres", "supervisord-conf", "env",
        "schema", "purge-intents", "reshard", "reconcile", "load-sale", "set-sku", "verify-draw", "token",
    }


@pytest.mark.parametrize("rest", [[], ["--dry-run", "--every", "5", "--grace-s=3"], ["--help"]])
def test_reconcile_gets_what_follows_its_name_untouched(rest):
    args = parse(["reconcile", *rest])
    assert (args.fn, args.reconcile_args) == (operations.cmd_reconcile, rest)


@pytest.mark.parametrize("argv", [
    ["set-sku", "x", "--stock", "1", "--bogus"], ["nope"], ["set-sku", "x"],
    ["purge-intents", "--every", "0"], ["load-sale", "f", "--timeout-s", "nan"],
])
def test_a_command_line_that_cannot_be_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2 and "flashsale" in capsys.readouterr().err


@pytest.mark.parametrize("text, ok", [("1", True), ("0.25", True), ("0", False), ("-1", False),
                                      ("inf", False), ("nan", False), ("x", False)])
def test_seconds_are_finite_and_above_0(text, ok):
    if ok:
        assert seconds_above_0(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            seconds_above_0(text)


@pytest.mark.parametrize("error, status", [
    (ConnectionError("nats down"), 1),
    (SchemaBusy("busy"), 1),
    (shardmap.ShardMapError("2 shards, the system has 3"), 2),
    (SettingsError("setting shards"), 2),
    (sku_changes.NotConfirmed("no writer answered"), 1),
    (sku_changes.AdminError("stock must be >= 0"), 2),
])
def test_an_error_a_command_meets_is_one_line_and_its_status(error, status, monkeypatch, capsys):
    def failing(args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(operations, "cmd_schema", failing)
    assert main(["schema"]) == status
    out = capsys.readouterr()
    assert out.out == "" and out.err == f"flashsale: {error}\n"


def test_any_other_error_is_not_swallowed(monkeypatch):
    def failing(args: argparse.Namespace) -> int:
        raise KeyError("a bug")

    monkeypatch.setattr(operations, "cmd_schema", failing)
    with pytest.raises(KeyError):
        main(["schema"])


def test_reconcile_runs_the_gateways_own_command_in_this_process(monkeypatch, tmp_path):
    monkeypatch.setenv("FLASHSALE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("NATS_URL", raising=False)
    seen = {}

    def reconcile_main(argv, settings):
        seen.update(argv=argv, nats_url=settings.nats_url)
        return 7

    monkeypatch.setattr(operations.reconcile, "main", reconcile_main)
    assert main(["reconcile", "--dry-run"]) == 7
    # Next to `flashsale dev`: its embedded nats-server, with the password generated for it.
    assert seen["argv"] == ["--dry-run"] and "flashsale:" in seen["nats_url"]


def test_python_dash_m_launch_is_the_same_command(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["flashsale", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("launch", run_name="__main__")
    assert e.value.code == 0 and "verify-draw" in capsys.readouterr().out
