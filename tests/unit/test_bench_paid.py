"""The paid scenario's pure parts: the money check against a ledger, and its report section."""

from __future__ import annotations

from bench.headline import headline
from bench.paid import PAID_TOKENS, PaidFigures, money_check, token_mix
from bench.report import render_report
from bench.results import PhaseResult, RunResult, SystemRun
from bench.stats import summarize
from gateway.psp import PaymentIntent


def _pi(pid: str, intent: str, received: int = 1000, refunded: int = 0) -> PaymentIntent:
    return PaymentIntent(id=intent, status="succeeded" if received else "requires_payment_method",
                         amount=1000, amount_received=received, amount_refunded=refunded,
                         metadata={"purchase_id": pid})


def test_money_squares_one_to_one() -> None:
    ledger = [_pi("p1", "pi_1"), _pi("p2", "pi_2"), _pi("p3", "pi_3", received=0)]  # p3 declined
    m = money_check(ledger, {"p1": "pi_1", "p2": "pi_2"})
    assert m == {"ledger_intents": 3, "captures": 2, "refunded_intents": 0, "captured_twice": 0,
                 "confirmed_without_capture": 0, "captured_not_confirmed": 0}


def test_money_check_finds_every_kind_of_mismatch() -> None:
    ledger = [
        _pi("p1", "pi_1"), _pi("p1", "pi_1b"),  # charged twice
        _pi("p2", "pi_2", refunded=1000),  # refunded: no money kept, so p2 has no capture
        _pi("p4", "pi_4"),  # money kept, purchase not confirmed
    ]
    m = money_check(ledger, {"p1": "pi_1", "p2": "pi_2", "p3": None})
    assert m["captures"] == 3 and m["refunded_intents"] == 1
    assert m["captured_twice"] == 1
    assert m["confirmed_without_capture"] == 3  # p1 (two captures), p2 (refunded), p3 (none)
    assert m["captured_not_confirmed"] == 1


def test_token_mix_is_mostly_visa_with_a_tenth_declined() -> None:
    mix = token_mix(PAID_TOKENS)
    assert sum(mix.values()) == 10 and mix["tok_visa"] >= 7 and mix["tok_chargeDeclined"] == 1


def test_paid_section_and_violations_in_the_headline() -> None:
    phase = PhaseResult(scenario="paid", system="flashsale/2sh", phase="paid", mode="open",
                        generator="python", duration_s=10, offered_rate=200, accepted_per_s=200,
                        decision=summarize([1.0, 2.0, 3.0]), cpu_pct={"gateway": 40.0, "fakepsp": 10.0})
    figures = PaidFigures(tokens=token_mix(PAID_TOKENS), psp_rates={"latency_ms": 20}, purchases=10,
                          by_status={"confirmed": 9, "rejected:payment_declined": 1}, confirmed=9,
                          captures=9, confirm_db=summarize([50.0, 60.0]), captured_twice=1)
    run = SystemRun(scenario="paid", system="flashsale/2sh", phases=[phase], paid=figures)
    result = RunResult(started="now", command="python -m bench --scenarios paid", machine={},
                       settings={}, runs=[run])
    assert headline([run]).invariant_violations == 1
    result.headline = headline([run])
    text = render_report(result)
    assert "## Payment required (paid scenario)" in text
    assert "rejected:payment_declined 1" in text
