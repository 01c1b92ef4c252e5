"""Which systems each scenario runs and each system's phases, from parsed command lines (no
servers)."""

from __future__ import annotations

from bench.__main__ import parse_args
from bench.generators import Live
from bench.plans import Planned, is_max, max_phase_name, phases_for, plan_systems
from bench.runner import GEN_PROCESSES, _Phase


def _args(*argv: str):
    return parse_args(["--generator", "python", *argv])


def test_flashsale_runs_once_per_nats_topology_and_the_baselines_once():
    args = _args("--systems", "echo,naive,flashsale", "--nats-cluster", "1,3")
    assert plan_systems("accepted", args) == [
        Planned("echo"), Planned("naive"), Planned("flashsale", 2, 1), Planned("flashsale", 2, 3)]
    # echo keeps no state: it is left out where only state means something.
    assert [p.name for p in plan_systems("retry-storm", args)] == ["naive", "flashsale", "flashsale"]
    # The shard sweep: every shard count on every topology.
    sweep = plan_systems("many-skus",
                         _args("--systems", "flashsale", "--shards", "1,2", "--nats-cluster", "1,3"))
    assert [(p.shards, p.nats_nodes) for p in sweep] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    assert plan_systems("paid", args) == [Planned("flashsale", 2)]
    assert plan_systems("paid", _args("--systems", "naive")) == []


def test_the_accepted_path_runs_at_every_connection_count_each_on_a_sku_of_its_own():
    args = _args("--connections", "64,256", "--fractions", "0.5,0.8")
    stock, plans = phases_for("accepted", "flashsale", args)
    assert [(p.phase, p.mode, p.connections) for p in plans if p.mode == "closed"] == [
        ("max", "closed", 64), ("max-c256", "closed", 256), ("max-repeat", "closed", 64)]
    assert [p.phase for p in plans if p.mode == "open"] == ["open@0.5", "open@0.8"]
    skus = [sku for p in plans for sku in p.skus]
    assert len(skus) == len(set(skus)) == len(plans)  # a fresh SKU per phase
    assert set(skus) == set(stock)  # and every one of them seeded
    # The other scenarios measure their maximum at the first count only.
    _, hot = phases_for("hot-sku", "flashsale", args)
    assert [(p.phase, p.connections) for p in hot if p.mode == "closed"] == [("max", 64)]


def test_a_baseline_has_no_repeat_phase_and_echo_waits_for_no_decision():
    args = _args("--connections", "64,256", "--fractions", "0.8")
    _, naive = phases_for("accepted", "naive", args)
    assert [p.phase for p in naive] == ["max", "max-c256", "open@0.8"]
    _, echo = phases_for("accepted", "echo", args)
    assert all(p.repeat_buyers for p in echo)  # a small pool of tokens: echo checks none
    assert [p.wait_every for p in echo if p.mode == "open"] == [0]
    assert [p.sampler_rate for p in echo if p.mode == "closed"] == [0.0, 0.0]


def test_open_loops_follow_every_maximum_but_not_the_repeat_phase():
    assert [is_max(p) for p in ("max", "max-c256", "max-repeat", "open@0.8", "retry")] == [
        True, True, False, False, False]
    assert (max_phase_name(64, True), max_phase_name(256, False)) == ("max", "max-c256")


def test_options_become_lists_and_the_ingests_follow_the_box():
    args = _args("--connections", "64,256", "--nats-cluster", "3", "--quick")
    assert (args.connections, args.nats_cluster) == ([64, 256], [3])
    assert (args.duration_s, args.fractions) == (3.0, [0.8])
    assert args.ingests >= 1  # flashsale.supervision.ingest_count: as under flashsale dev
    assert _args("--ingests", "2").ingests == 2


class _Sut:
    """What a phase's generator specs read of the system: its port and its label."""

    port = 1

    def label(self) -> str:
        return "flashsale/2sh"


def test_open_loops_open_as_many_connections_as_the_max_they_follow(tmp_path):
    _, plans = phases_for("accepted", "flashsale", _args("--connections", "64,256", "--fractions", "0.8"))
    open_plan = next(p for p in plans if p.mode == "open")
    assert open_plan.connections == 256
    open_plan.rate = 1000.0
    specs = _Phase(_Sut(), "accepted", open_plan, tmp_path, "t", Live("x")).gen_specs()
    assert [s.concurrency for s in specs] == [256 // GEN_PROCESSES] * GEN_PROCESSES
    assert sum(s.rate for s in specs) == 1000.0
    # At the default 64 each generator process keeps its 64.
    _, plans = phases_for("hot-sku", "flashsale", _args("--connections", "64,256", "--fractions", "0.8"))
    hot_open = next(p for p in plans if p.mode == "open")
    hot_open.rate = 1000.0
    specs = _Phase(_Sut(), "hot-sku", hot_open, tmp_path, "t", Live("x")).gen_specs()
    assert [s.concurrency for s in specs] == [64] * GEN_PROCESSES
