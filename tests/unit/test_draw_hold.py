"""The writer's hold on a due draw (committer/draw_hold.py), against a fake consumer."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from committer.draw_hold import DRAW_HOLD_MAX_MS, DrawHold
from committer.machine import Machine
from committer.step import Sku
from config.settings import load
from proto.draw import DRAW_GRACE_MS

T0 = 1_700_000_000_000
DUE = T0 + 2_000 + DRAW_GRACE_MS


class FakeJs:
    """consumer_info answers what the test last set."""

    def __init__(self) -> None:
        self.delivered = 0
        self.pending = 0
        self.ack_pending = 0

    async def consumer_info(self, stream: str, durable: str) -> Any:
        return SimpleNamespace(delivered=SimpleNamespace(stream_seq=self.delivered),
                               num_pending=self.pending, num_ack_pending=self.ack_pending)


def due_draw() -> int | None:
    m = Machine(shard=0)
    m.load_sku(Sku(sku="s", stock=1, sale_start_ms=T0, draw_window_s=2, draw_seed="ab" * 32))
    return m.next_draw_ms()


def hold(js: FakeJs) -> DrawHold:
    return DrawHold(js, load(env={}, file=None).names, 0)


async def test_the_machines_draw_is_due_at_its_grace():
    assert due_draw() == DUE


async def test_no_draw_or_a_draw_not_due_is_not_held():
    js = FakeJs()
    js.pending = 5
    assert not await hold(js).held(None, DUE, 0)
    assert not await hold(js).held(DUE, DUE - 1, 0)


async def test_held_until_everything_stored_when_due_is_taken_not_what_comes_after():
    js = FakeJs()
    h = hold(js)
    js.delivered, js.pending, js.ack_pending = 100, 20, 10  # the cut: sequence 120
    assert await h.held(DUE, DUE, 10)
    js.delivered, js.pending, js.ack_pending = 120, 500, 20  # more keeps arriving after the cut
    assert not await h.held(DUE, DUE + 50, 20)


async def test_held_while_a_crashed_writers_batch_is_unacked():
    js = FakeJs()
    h = hold(js)
    js.delivered, js.pending, js.ack_pending = 100, 0, 30  # 30 out with a crashed writer
    assert await h.held(DUE, DUE, 0)
    js.ack_pending = 30  # redelivered to this writer: the batch in hand
    assert not await h.held(DUE, DUE + 50, 30)


async def test_the_hold_is_bounded():
    js = FakeJs()
    js.delivered, js.pending = 0, 10**6
    assert not await hold(js).held(DUE, DUE + DRAW_HOLD_MAX_MS + 1, 0)
