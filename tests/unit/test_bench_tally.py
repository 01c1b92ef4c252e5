"""Summing a phase's generators and wrk into its PhaseResult, from hand-made result files and
wrk output (no servers, no generator processes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgspec

from bench.genspec import GenResult
from bench.results import PhaseResult
from bench.tally import Tally, add_generators, add_totals, add_wrk, wrk_per_second

WRK_OUT = (b"Running 2s test @ http://127.0.0.1:1\n"
           b'WRK_JSON {"requests":7,"duration_us":2000000,"errors":{"connect":0,"read":1,"write":0,'
           b'"timeout":2,"status":3},"latency_us":{"p50":1000,"p95":2000,"p99":3000,"max":4000,'
           b'"mean":1500},"statuses":{"202":4,"409":2,"503":1},"seconds":{"100":3,"102":4},'
           b'"repeated":1,"ids":["p1","p2","p_echo"]}\n')


@dataclass
class _Proc:
    returncode: int


@dataclass
class _Gen:
    """What add_generators reads of a generator process: its exit code and its result file."""

    proc: _Proc
    out: Path


def _phase(mode: str = "open") -> PhaseResult:
    return PhaseResult(scenario="accepted", system="flashsale/2sh", phase="open@0.8", mode=mode,
                       generator="python", duration_s=2)


def _gen(tmp_path: Path, name: str, result: GenResult, code: int = 0) -> _Gen:
    out = tmp_path / name
    out.write_bytes(msgspec.msgpack.encode(result))
    return _Gen(_Proc(code), out)


def test_generators_add_up_and_a_failed_one_becomes_a_note(tmp_path):
    a = GenResult(statuses={"202": 3, "409": 1}, errors={"timeout": 1}, accepted_ids=["p1", "p2"],
                  accept_ms=[1.0, 2.0], decision_ms=[5.0], answered=4, per_second=[2, 2],
                  lag_ms=[0.5], undecided=1)
    b = GenResult(statuses={"202": 2}, accepted_ids=["p2", "p3"], accept_ms=[3.0], answered=2,
                  per_second=[1, 0, 1], clicks_repeated=2)
    result, tally = _phase(), Tally()
    gens = [_gen(tmp_path, "a", a), _gen(tmp_path, "b", b), _gen(tmp_path, "c", GenResult(), code=1)]
    add_generators(result, tally, gens, ["boom"], "open")
    assert (tally.accepted, tally.answered, tally.ids) == (5, 6, {"p1", "p2", "p3"})
    assert tally.per_second == [3, 2, 1]
    assert result.statuses == {"202": 5, "409": 1}
    assert result.errors == {"timeout": 1, "undecided_after_wait": 1}
    assert (result.accept.count, result.decision.count, result.clicks_repeated) == (3, 1, 2)
    assert result.gen_lag_p99_ms == 0.5
    assert result.notes == ["generator failed: boom"]
    assert result.retry is None  # only the retry storm counts retries


def test_wrk_answers_count_2xx_and_sold_out_and_its_latencies_replace_the_generators():
    result, tally = _phase("closed"), Tally()
    add_wrk(result, tally, WRK_OUT)
    assert (tally.accepted, tally.answered) == (4, 6)  # 409 sold out is an answer, not an order
    assert tally.ids == {"p1", "p2"}  # echo's placeholder id is no purchase
    assert result.errors == {"read": 1, "timeout": 2}  # "status" = the non-2xx, in statuses already
    assert (result.accept.p99, result.accept.count) == (3.0, 7)
    assert tally.per_second == [3, 0, 4]
    assert result.clicks_repeated == 1
    add_totals(result, tally, 2.0, "flashsale")
    assert (result.accepted_per_s, result.answered_per_s) == (2.0, 3.0)
    assert "retries of earlier clicks" in result.notes[0]


def test_wrk_without_its_result_line_is_a_note():
    result = _phase("closed")
    add_wrk(result, Tally(), b"unable to connect to 127.0.0.1:1 Connection refused\n")
    assert result.notes and "wrk gave no result" in result.notes[0]
    assert wrk_per_second({}) == []
