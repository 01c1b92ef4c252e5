"""The run's PNG plots from hand-made results: each is drawn when its phases exist, and only then."""

from __future__ import annotations

from bench.plots import write_all
from bench.results import PhaseResult, SystemRun
from bench.stats import summarize


def _phase(scenario: str, system: str, phase: str, rate: float | None = None) -> PhaseResult:
    return PhaseResult(scenario=scenario, system=system, phase=phase,
                       mode="open" if rate else "closed", generator="python", duration_s=3,
                       offered_rate=rate, answered_per_s=1000, accepted_per_s=900,
                       decision=summarize([1.0, 2.0, 30.0]), answered_per_second=[900, 1100, 1000],
                       decided_per_second=[850, 1000, 1050])


def test_every_plot_with_phases_to_draw_is_written(tmp_path):
    runs = [
        SystemRun(scenario="hot-sku", system="flashsale/2sh", phases=[
            _phase("hot-sku", "flashsale/2sh", "max"), _phase("hot-sku", "flashsale/2sh", "open@0.8", 800)]),
        SystemRun(scenario="accepted", system="naive", phases=[
            _phase("accepted", "naive", "max"), _phase("accepted", "naive", "open@0.8", 700)]),
        *[SystemRun(scenario="many-skus", system=f"flashsale/{n}sh", shards=n,
                    phases=[_phase("many-skus", f"flashsale/{n}sh", "max")]) for n in (1, 2)],
    ]
    made = write_all(runs, tmp_path)
    assert made == ["latency_vs_rate.png", "accepted_latency_vs_rate.png", "throughput_over_time.png",
                    "shard_sweep.png"]
    for name in made:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_to_draw_writes_nothing(tmp_path):
    assert write_all([], tmp_path) == []
    assert not list(tmp_path.iterdir())
