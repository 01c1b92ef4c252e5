"""Report rendering and the headline comparison, from hand-made results (no servers)."""

from __future__ import annotations

import dataclasses

import pytest

from bench.disk import FlushFigures
from bench.headline import cpu_us_per_request, front_names, headline
from bench.invariants import Invariants
from bench.markdown import render_table
from bench.report import render_group_commit, render_report
from bench.report_accepted import loses, projection, render_connections, render_cost_per_purchase
from bench.report_scenarios import render_streams
from bench.results import GroupCommit, PhaseResult, RunResult, SystemRun
from bench.runner import group_commit
from bench.stats import summarize
from bench.systems import BatchCounters


def _phase(system: str, phase: str, answered: float, accepted: float, p99s: list[float]) -> PhaseResult:
    return PhaseResult(scenario="hot-sku", system=system, phase=phase, mode="closed", generator="wrk",
                       duration_s=10, answered_per_s=answered, accepted_per_s=accepted,
                       decision=summarize(p99s), statuses={"202": 10, "409": 5, "503": 2},
                       errors={"timeout": 1}, cpu_pct={"ingest": 90.0})


def _runs() -> list[SystemRun]:
    return [
        SystemRun(scenario="hot-sku", system="echo", phases=[_phase("echo", "max", 30000, 30000, [])]),
        SystemRun(scenario="hot-sku", system="naive", phases=[_phase("naive", "max", 2000, 2000, [5.0])]),
        SystemRun(scenario="hot-sku", system="flashsale/2sh", shards=2,
                  phases=[_phase("flashsale/2sh", "max", 20000, 300, [3.0]),
                          _phase("flashsale/2sh", "open@0.8", 16000, 300, [1.0, 2.0, 40.0])],
                  invariants=Invariants(lost=1)),
    ]


def test_render_table_aligns_and_escapes() -> None:
    table = render_table(["name", "value"], [["a|b", 1234.5], ["c", None]])
    lines = table.splitlines()
    assert lines[0] == "| name | value |"
    assert lines[1] == "|---|---:|"
    assert lines[2] == "| a\\|b | 1,234.5 |"
    assert lines[3] == "| c | - |"


def test_headline_ratios_from_the_same_run() -> None:
    h = headline(_runs())
    assert h.vs_naive == 10.0
    assert h.vs_echo == 20000 / 30000
    assert h.p99_decision_at_80pct_ms == 40.0
    assert h.invariant_violations == 1


def test_report_lists_errors_without_sold_out_and_flags_violations() -> None:
    result = RunResult(started="now", command="python -m bench --quick", machine={"nproc": "2"},
                       settings={}, runs=_runs())
    result.headline = headline(result.runs)
    text = render_report(result)
    assert "| hot-sku answered/s flashsale / naive | 10.00 | >= 10 | met |" in text
    assert "**not met**" in text  # echo ratio 0.67 >= 0.5 is met; the lost intent is not
    assert "503: 2, timeout: 1" in text
    assert "409: 5" not in text  # sold out is an answer, not an error


def _acc(system: str, phase: str, accepted: float, flushes: int | None, cpu: dict[str, float],
         p99s: list[float] | None = None) -> PhaseResult:
    return PhaseResult(scenario="accepted", system=system, phase=phase, mode="closed", generator="wrk",
                       duration_s=10, answered_per_s=accepted, accepted_per_s=accepted,
                       accepted=int(accepted * 10), decision=summarize(p99s or []), cpu_pct=cpu,
                       flush=FlushFigures(source="device", flushes=flushes, window_s=12.0, flush_ms=5,
                                          idle_per_s=1.5))


def _accepted_runs() -> list[SystemRun]:
    return [
        SystemRun(scenario="accepted", system="echo",
                  phases=[_acc("echo", "max", 20000, 3, {"echo": 100.0})]),
        SystemRun(scenario="accepted", system="naive",
                  phases=[_acc("naive", "max", 1000, 10000, {"naive": 50.0, "postgres": 50.0})]),
        SystemRun(scenario="accepted", system="flashsale/2sh", shards=2, phases=[
            _acc("flashsale/2sh", "max", 8000, 4000,
                 {"ingest": 80.0, "nats-server": 30.0, "generator": 40.0}),
            _acc("flashsale/2sh", "max-repeat", 10000, 4000, {"ingest": 80.0}),
            _acc("flashsale/2sh", "open@0.8", 6400, 3200, {"ingest": 60.0}, [10.0, 20.0, 150.0]),
        ]),
    ]


def test_accepted_path_headline_is_its_own() -> None:
    h = headline(_accepted_runs())
    assert h.acc_vs_naive == 8.0
    assert h.acc_vs_echo == 0.4
    assert h.acc_flushes_per_accepted == 4000 / 80000
    assert h.acc_p99_decision_at_80pct_ms == 150.0
    assert h.hot_answered_per_s == {}  # nothing of the accepted path leaks into the sell-out figures


def test_cpu_per_request_of_the_front_and_of_named_processes() -> None:
    p = _accepted_runs()[2].phases[0]
    assert front_names(p) == ["ingest"]
    assert cpu_us_per_request(p) == 0.8 / 8000 * 1e6  # 100 us of ingest per purchase
    assert cpu_us_per_request(p, ["ingest", "nats-server"]) == pytest.approx(1.1 / 8000 * 1e6)
    assert front_names(_accepted_runs()[1].phases[0]) == ["naive"]


def test_projection_from_measured_flushes_leaves_echo_out() -> None:
    lines = projection(_accepted_runs())
    assert lines == [
        "naive: 1.000 flushes per accepted purchase -> at most 1,000 purchases/s on a disk with 1 ms flushes",
        "flashsale/2sh: 0.050 flushes per accepted purchase -> at most 20,000 purchases/s on a disk "
        "with 1 ms flushes",
    ]


def test_report_has_accepted_path_tables_apart_from_sell_out() -> None:
    result = RunResult(started="now", command="python -m bench", machine={}, settings={},
                       runs=_accepted_runs(), verify_us={"new": 50.0, "cached": 0.2})
    result.headline = headline(result.runs)
    text = render_report(result)
    assert "## Accepted path" in text
    assert "## Sell-out" not in text  # no hot-sku run: no sell-out section
    assert "| disk flushes per accepted purchase at max, flashsale | 0.050 | <= 0.05 | met |" in text
    assert "| p99 POST -> decided at 0.8 x max, flashsale (ms) | 150 | <= 100 | **not met** |" in text
    # flashsale: 8,000/s, 8x naive, 0.4x echo, 0.05 flushes each, 20,000/s at 1 ms, 138 us of
    # server CPU (ingest 80% + nats 30% of a core; not the generator), 100 us of it ingest's.
    assert "| flashsale/2sh | 8,000 | - | 8.00 | 0.40 | 150 | 0.050 | 20,000 | 138 | 100 |" in text
    assert "| echo | 20,000 | - | 20.00 | 1.00 | - | 0.000 | - |" in text
    # verification: new buyers 100 us of ingest per request, repeated buyers 80 us
    assert "| flashsale/2sh | 8,000 | 10,000 | 100 | 80 | 20 |" in text
    assert "a new token 50.0 us" in text
    flush_row = "| accepted | flashsale/2sh | max | 80,000 | 4,000 | 333.3 | 0.050 | 1.5 | 0.001 | device |"
    assert flush_row in text


def test_event_stream_decisions_get_their_own_table() -> None:
    runs = _runs()
    assert render_streams(runs) == []  # no phase followed its purchases on their streams
    phase = runs[2].phases[1]
    phase.stream_decision = summarize([2.0, 3.0, 50.0])
    table = "\n".join(render_streams(runs))
    assert "Time to decision through the event stream" in table
    assert "| hot-sku | flashsale/2sh | open@0.8 | 3 |" in table


def test_group_commit_figures_come_from_the_counters_difference():
    before = BatchCounters(batches=10, intents=500, store_s=0.05)
    after = BatchCounters(batches=110, intents=6_500, store_s=0.65)
    g = group_commit(before, after, duration_s=2.0)
    assert g == GroupCommit(batches_per_s=50.0, intents_per_batch=60.0, store_ms_per_batch=6.0)
    assert group_commit(after, after, 2.0) is None  # no batch in the window: nothing to say
    assert group_commit(None, after, 2.0) is None  # a system without the counters
    # The committers' batches: 40 transactions of 6,000 intents in 2 s.
    after = BatchCounters(batches=110, intents=6_500, store_s=0.65, commits=50, committed_intents=6_500)
    g = group_commit(dataclasses.replace(before, commits=10, committed_intents=500), after, 2.0)
    assert g is not None and (g.commits_per_s, g.intents_per_commit) == (20.0, 150.0)


def test_the_group_commit_table_appears_only_for_phases_that_have_it():
    runs = _runs()
    assert render_group_commit(runs) == []
    runs[2].phases[0].group_commit = GroupCommit(batches_per_s=50, intents_per_batch=60, store_ms_per_batch=6)
    table = "\n".join(render_group_commit(runs))
    assert "## Group commit" in table
    assert "| hot-sku | flashsale/2sh | max | 300 | 50 | 60 | 6 |" in table


def test_every_connection_count_gets_its_columns_per_system():
    runs = _accepted_runs()
    assert render_connections(runs) == []  # one count: the systems table says it all
    c256 = _acc("flashsale/2sh", "max-c256", 12000, 3000, {"ingest": 90.0, "postgres": 30.0})
    runs[2].phases.insert(1, c256)
    table = "\n".join(render_connections(runs))
    assert "| system | accepted/s (max) | flushes / accepted (max) | server CPU us / accepted (max) | " \
           "accepted/s (max-c256) |" in table
    assert "| flashsale/2sh | 8,000 | 0.050 | 138 | 12,000 | 0.025 | 100 |" in table
    assert "| naive | 1,000 | 1.000 | 1,000 | - | - | - |" in table  # not measured at 256


def test_cpu_of_each_process_per_accepted_purchase():
    table = "\n".join(render_cost_per_purchase(_accepted_runs()))
    assert "| system | phase | accepted/s | flushes / accepted | server CPU us | echo | naive | postgres | " \
           "ingest | nats-server |" in table  # the generator is the load's, not the system's
    assert "| flashsale/2sh | max | 8,000 | 0.050 | 138 | - | - | - | 100 | 38 |" in table
    assert "| naive | max | 1,000 | 1.000 | 1,000 | - | 500 | 500 | - | - |" in table


def test_a_cluster_loses_what_a_quorum_does():
    assert loses("flashsale/2sh").startswith("nothing (202 after the JetStream ack")
    assert loses("flashsale/2sh/r3").startswith("nothing while 2 of 3 nodes survive")
    assert loses("redis-everysec") == "up to ~1 s of answered orders"


def test_flashsale_against_redis_always_from_its_fastest_topology():
    runs = _accepted_runs()
    runs.append(SystemRun(scenario="accepted", system="redis-always", phases=[
        _acc("redis-always", "max", 4000, 1000, {"redis-always": 40.0, "redis-server": 20.0})]))
    runs.append(SystemRun(scenario="accepted", system="flashsale/2sh/r3", phases=[
        _acc("flashsale/2sh/r3", "max", 6000, 600, {"ingest": 60.0}),
        _acc("flashsale/2sh/r3", "open@0.8", 4800, 600, {"ingest": 50.0}, [5.0])]))
    h = headline(runs)
    assert h.acc_system == "flashsale/2sh"  # 8,000/s against the cluster's 6,000/s
    assert (h.acc_vs_redis_always, h.acc_p99_decision_at_80pct_ms) == (2.0, 150.0)
    assert h.acc_cpu_vs_redis_always == pytest.approx(137.5 / 150)  # server CPU us per purchase
    result = RunResult(started="now", command="python -m bench", machine={}, settings={}, runs=runs)
    result.headline = h
    text = render_report(result)
    assert "| accepted/s flashsale / redis-always | 2.00 | >= 1.5 | met |" in text
    cpu_row = "| server CPU per accepted purchase flashsale / redis-always | 0.92 | <= 0.6 | **not met** |"
    assert cpu_row in text
    assert "| flashsale/2sh/r3 | 6,000 | 1.50 | 6.00 | 0.30 | 5.0 | 0.010 |" in text
