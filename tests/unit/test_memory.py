"""What the machine remembers (committer/memory.py) and the records it hands out
(committer/step.py): a step's journaled changes are taken back exactly, and the money checks
fail loudly. The decisions themselves: tests/unit/test_machine.py."""

from __future__ import annotations

import pytest

from committer.memory import Memory
from committer.step import InvariantViolation, Sku, Step
from proto.messages import Decision

T0 = 1_700_000_000_000


def reservation(pid: str, expires_at_ms: int) -> Decision:
    return Decision(id=pid, sku="s", user_id="u", qty=1, status="reserved", reason=None,
                    amount_cents=500, accepted_at_ms=T0, decided_at_ms=T0, updated_at_ms=T0,
                    expires_at_ms=expires_at_ms)


def test_a_step_taken_back_leaves_the_memory_as_it_was():
    mem = Memory(seen_max=10)
    mem.load_sku(Sku(sku="s", stock=5))
    mem._begin_step()
    sku = mem._save_sku("s")
    sku.reserved += 1
    d = reservation("p1", T0 + 1_000)
    mem._set_reserved("p1", d)
    mem._set_decision(d)
    mem._add_user_qty(("s", "u"), 1)
    assert mem.next_expiry_ms() == T0 + 1_000
    mem.undo()
    assert mem.skus["s"].reserved == 0
    assert mem.reserved == {} and dict(mem.decisions) == {} and mem.user_qty == {}
    assert mem.next_expiry_ms() is None  # the heap entry no longer stands for a reservation
    with pytest.raises(RuntimeError):
        mem.undo()  # one step back at most


def test_expired_reservations_are_closed_in_their_order_and_come_back_on_undo():
    mem = Memory(seen_max=10)
    for pid, at in (("late", T0 + 2), ("early", T0 + 1)):
        mem.load_decision(reservation(pid, at))
    mem._begin_step()
    assert [d.id for d in mem._pop_expired(T0 + 5)] == ["early", "late"]
    assert mem.reserved == {}
    mem.undo()
    assert set(mem.reserved) == {"early", "late"} and mem.next_expiry_ms() == T0 + 1


def test_money_checks_fail_loudly():
    with pytest.raises(InvariantViolation):
        Sku(sku="s", stock=1, reserved=1, sold=1).check()
    mem = Memory(seen_max=10)
    with pytest.raises(InvariantViolation):
        mem._add_user_qty(("s", "u"), -1)


def test_only_a_step_with_rows_to_write_has_writes():
    assert not Step(results=[reservation("p1", T0)]).has_writes
    assert Step(skus={"s": Sku(sku="s", stock=1)}).has_writes
