"""Report rendering and the headline comparison, from hand-made results (no servers)."""

from __future__ import annotations

from bench.report import RunResult, headline, render_report, render_table
from bench.runner import PhaseResult, SystemRun
from bench.stats import summarize
from bench.systems import Invariants


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
