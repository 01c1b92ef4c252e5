"""The writer's I/O loop (committer/writer.py, batch.py, outbox.py) against small fakes of its
consumer, Postgres rows and NATS: what it does in which order with a batch. A decision is
acked only after its commit and announced only after its ack; a failed commit is handed back
(nak) and neither acked nor announced; a purchase id another shard decided meanwhile makes the
batch be decided again. The same loop on real servers: tests/integration/test_committer.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import asyncpg
import nats.errors
import pytest

from committer import batch, faults, store
from committer.machine import Machine
from committer.outbox import RESULTS_PER_MESSAGE_MAX
from committer.shard_rows import ShardRows
from committer.step import Sku, Step
from committer.writer import ShardWriter
from config.settings import Settings
from proto.clock import now_ms
from proto.messages import (
    KEY_REUSED,
    Decision,
    Intent,
    IntentBatch,
    PaymentJob,
    Purchase,
    encode,
    payment_decoder,
    result_decoder,
)

SETTINGS = Settings(namespace="unit", commit_linger_ms=0, batch_max=10)
NAMES = SETTINGS.names


class Log(list[str]):
    """What the fakes were asked to do, in order."""


@dataclass
class FakeMsg:
    log: Log
    data: bytes
    seq: int
    subject: str = "unit.intents.0.batch"

    @property
    def metadata(self) -> Any:
        return SimpleNamespace(sequence=SimpleNamespace(stream=self.seq))

    async def ack(self) -> None:
        self.log.append(f"ack {self.seq}")

    async def nak(self) -> None:
        self.log.append(f"nak {self.seq}")

    async def term(self) -> None:
        self.log.append(f"term {self.seq}")


@dataclass
class FakePuller:
    fetches: list[list[FakeMsg]] = field(default_factory=list)
    unread_msgs: list[FakeMsg] = field(default_factory=list)

    async def fetch(self, batch_max: int, timeout_s: float) -> list[FakeMsg]:
        return self.fetches.pop(0) if self.fetches else []

    def unread(self, msgs: list[FakeMsg]) -> None:
        self.unread_msgs += msgs


@dataclass
class FakeRows:
    """ShardRows in memory. `failing`: exceptions the next commits raise, in order."""

    log: Log
    failing: list[BaseException] = field(default_factory=list)
    stored: dict[str, Decision | Purchase] = field(default_factory=dict)
    committed: list[Step] = field(default_factory=list)
    intent_at: dict[str, int] = field(default_factory=dict)

    async def commit(self, step: Step, now_ms: int, stored_at: dict[str, int]) -> None:
        self.log.append("commit")
        if self.failing:
            raise self.failing.pop(0)
        self.committed.append(step)
        self.intent_at.update(stored_at)

    async def lookup(self, ids: list[str]) -> list[Decision | Purchase]:
        return [self.stored[i] for i in ids if i in self.stored]

    async def renew_lease(self) -> None:
        self.log.append("renew")

    async def intent_seqs(self, ids: list[str]) -> dict[str, int]:
        return {i: self.intent_at[i] for i in ids if i in self.intent_at}


@dataclass
class FakeJetStream:
    log: Log
    published: list[tuple[str, bytes]] = field(default_factory=list)

    async def publish(self, subject: str, payload: bytes, timeout: float | None = None,  # noqa: ASYNC109
                      headers: dict[str, str] | None = None) -> None:
        self.log.append("payment")  # result batches are core publishes (FakeNats)
        self.published.append((subject, payload))

    async def consumer_info(self, stream: str, durable: str) -> Any:
        return SimpleNamespace(delivered=None, num_pending=0, num_ack_pending=0)


@dataclass
class FakeNats:
    """Core NATS: progress, and result batches (the results stream captures them)."""

    log: Log
    js: FakeJetStream  # holds what was published, streams and core alike
    is_connected: bool = True
    closed: bool = False  # publishing raises, as nats-py's does on a closed connection

    async def publish(self, subject: str, payload: bytes) -> None:
        if self.closed:
            raise nats.errors.ConnectionClosedError
        if subject == NAMES.results(0):
            self.log.append("results")
            self.js.published.append((subject, payload))
        else:
            self.log.append("progress")


def purchase(pid: str, sku: str = "free", request_hash: str = "h1") -> Purchase:
    return Purchase(id=pid, sku=sku, qty=1, user_id="alice", request_hash=request_hash,
                    accepted_at_ms=now_ms(), payment_token="tok_visa")


def machine() -> Machine:
    m = Machine(shard=0)
    m.load_sku(Sku(sku="free", stock=5))
    m.load_sku(Sku(sku="paid", stock=5, price_cents=500, payment="required"))
    return m


@dataclass
class Parts:
    log: Log
    writer: ShardWriter
    puller: FakePuller
    rows: FakeRows
    js: FakeJetStream

    def deliver(self, *batches: list[Intent], first_seq: int = 1) -> list[FakeMsg]:
        msgs = [FakeMsg(self.log, encode(IntentBatch(intents=b)), seq)
                for seq, b in enumerate(batches, start=first_seq)]
        self.puller.fetches.append(msgs)
        return msgs

    def results(self) -> list[Any]:
        return [result_decoder.decode(p) for s, p in self.js.published if s == NAMES.results(0)]

    def payments(self) -> list[PaymentJob]:
        return [payment_decoder.decode(p) for s, p in self.js.published if s != NAMES.results(0)]


@pytest.fixture
def parts() -> Parts:
    log = Log()
    puller, rows, js = FakePuller(), FakeRows(log), FakeJetStream(log)
    links: Any = SimpleNamespace(nc=FakeNats(log, js), js=js, alive=True)
    writer = ShardWriter(SETTINGS, 0, 1, links, machine(), puller, rows, decided_seq=0)  # type: ignore[arg-type]
    return Parts(log, writer, puller, rows, js)


def test_the_fake_rows_answer_everything_the_writer_asks_of_postgres():
    asked = {name for name in vars(ShardRows) if not name.startswith("_")}
    assert asked == {"lookup", "commit", "renew_lease", "intent_seqs"}
    assert asked <= set(vars(FakeRows))


async def test_a_batch_is_committed_then_acked_then_announced(parts: Parts):
    parts.deliver([purchase("p1"), purchase("p2", "paid")], [purchase("p3")])
    await parts.writer.run_once()
    assert parts.log == ["progress", "commit", "ack 1", "ack 2", "results", "payment"]
    [result] = parts.results()
    assert {d.id: d.status for d in result.decisions} == {
        "p1": "confirmed", "p2": "reserved", "p3": "confirmed"}
    assert result.decided_seq == 2 and parts.writer.decided_seq == 2
    assert [j.id for j in parts.payments()] == ["p2"]
    assert parts.payments()[0].payment_token == "tok_visa"
    assert parts.rows.intent_at == {"p1": 1, "p2": 1, "p3": 2}


async def test_results_not_sent_leave_the_batch_committed_and_acked(
        parts: Parts, caplog: pytest.LogCaptureFixture):
    parts.deliver([purchase("p1")])
    parts.writer.links.nc.closed = True
    await parts.writer.run_once()
    assert parts.log == ["commit", "ack 1"] and parts.results() == []
    assert "results not sent" in caplog.text
    assert parts.writer.decided_seq == 1


@pytest.mark.parametrize("error", [
    ConnectionError("postgres gone"),
    store.Fenced("epoch 1 is no longer the lease holder"),
    asyncpg.InternalClientError("cannot switch to state 15"),
])
async def test_a_failed_commit_is_handed_back_never_acked_nor_announced(parts: Parts, error: Exception):
    parts.rows.failing.append(error)
    parts.deliver([purchase("p1")], [purchase("p2")])
    with pytest.raises(type(error)):
        await parts.writer.run_once()
    assert parts.log == ["progress", "commit", "nak 1", "nak 2"]
    assert parts.results() == [] and parts.payments() == []


async def test_an_id_decided_by_another_shard_is_refused_and_the_batch_decided_again(parts: Parts):
    twin = Decision(id="p1", sku="other", user_id="alice", qty=1, status="confirmed", reason=None,
                    amount_cents=0, accepted_at_ms=1, decided_at_ms=1, updated_at_ms=1,
                    request_hash="h-other")
    parts.rows.stored["p1"] = twin
    parts.rows.failing.append(store.DecidedElsewhere(["p1"]))
    parts.deliver([purchase("p1"), purchase("p2")])
    await parts.writer.run_once()
    assert parts.log == ["progress", "commit", "commit", "ack 1", "results"]
    [step] = parts.rows.committed
    assert [d.id for d in step.inserts] == ["p2"]
    [result] = parts.results()
    assert [(r.key, r.reason) for r in result.refusals] == [("p1", KEY_REUSED)]
    assert parts.writer.machine.skus["free"].sold == 1  # p1's first decision was taken back


async def test_an_id_in_conflict_that_cannot_be_read_stops_the_writer(parts: Parts):
    parts.rows.failing.append(store.DecidedElsewhere(["p1"]))
    parts.deliver([purchase("p1")])
    with pytest.raises(store.CorruptWrite):
        await parts.writer.run_once()
    assert "ack 1" not in parts.log and parts.results() == []


async def test_a_batch_that_meets_again_an_id_it_read_back_stops_the_writer(parts: Parts):
    """Postgres and the machine disagreeing about an id (it was told the row and inserted it
    again) would decide the batch again without end: the writer stops instead."""
    parts.rows.stored["p1"] = Decision(
        id="p1", sku="other", user_id="alice", qty=1, status="confirmed", reason=None,
        amount_cents=0, accepted_at_ms=1, decided_at_ms=1, updated_at_ms=1, request_hash="h-other")
    parts.rows.failing += [store.DecidedElsewhere(["p1"]), store.DecidedElsewhere(["p1"])]
    parts.deliver([purchase("p1"), purchase("p2")])
    with pytest.raises(store.CorruptWrite):
        await parts.writer.run_once()
    assert parts.log == ["progress", "commit", "commit"] and parts.results() == []


async def test_an_undecodable_message_is_terminated_and_the_rest_decided(parts: Parts):
    [bad, _] = parts.deliver([purchase("p1")], [purchase("p2")])
    bad.data = b"\xc1 not msgpack"
    await parts.writer.run_once()
    assert parts.log == ["term 1", "progress", "commit", "ack 2", "results"]
    assert parts.writer.decided_seq == 2


async def test_a_batch_stops_at_batch_max_intents_and_leaves_the_rest_for_the_next(parts: Parts):
    full = [purchase(f"a{n}") for n in range(SETTINGS.batch_max)]
    [_, rest] = parts.deliver(full, [purchase("b")])
    await parts.writer.run_once()
    assert parts.puller.unread_msgs == [rest]
    assert "ack 2" not in parts.log and parts.writer.decided_seq == 1


async def test_an_idle_batch_commits_nothing_and_announces_nothing(parts: Parts):
    await parts.writer.run_once()
    assert parts.log == []
    assert (await batch.read([], SETTINGS.batch_max, parts.puller)).last_seq is None


async def test_a_big_step_goes_out_in_several_messages_the_sku_states_last(parts: Parts):
    step = Step(results=[Decision(id=f"p{n}", sku="free", user_id="u", qty=1, status="confirmed",
                                  reason=None, amount_cents=0, accepted_at_ms=1, decided_at_ms=1,
                                  updated_at_ms=1) for n in range(RESULTS_PER_MESSAGE_MAX + 1)],
                skus={"free": parts.writer.machine.skus["free"]})
    await parts.writer.outbox.step(step, decided_seq=7)
    first, last = parts.results()
    assert len(first.decisions) == RESULTS_PER_MESSAGE_MAX and first.skus == []
    assert len(last.decisions) == 1 and [s.sku for s in last.skus] == ["free"]


async def test_a_live_reservations_job_reads_its_card_token_back_from_the_stream(parts: Parts):
    msg = SimpleNamespace(data=encode(IntentBatch(intents=[purchase("p1", "paid")])))

    async def get_msg(stream: str, seq: int, direct: bool = False) -> Any:
        assert (stream, seq) == (NAMES.intents_stream(0), 9)
        return msg

    parts.js.get_msg = get_msg  # type: ignore[attr-defined]
    parts.rows.intent_at["p1"] = 9
    job = PaymentJob(id="p1", sku="paid", user_id="alice", amount_cents=500, payment_token=None,
                     expires_at_ms=now_ms() + 60_000, shard=0)
    await parts.writer.outbox.payments([job])
    assert [j.payment_token for j in parts.payments()] == ["tok_visa"]


async def test_the_lease_is_renewed_when_due_and_an_idle_writer_sends_heartbeats(parts: Parts):
    parts.writer.renewed_at -= parts.writer.renew_every_s
    await parts.writer._keep_lease()
    assert parts.log == ["renew", "results"]
    [beat] = parts.results()
    assert beat.decisions == [] and beat.epoch == 1
    await parts.writer._keep_lease()  # neither due again yet
    assert parts.log == ["renew", "results"]


async def test_chaos_faults_wrap_the_rows_only_when_asked_for(parts: Parts):
    assert faults.with_faults(SETTINGS, parts.rows) is parts.rows
    chaos = Settings(namespace="unit", fail_after_commit=2)
    faulty = faults.with_faults(chaos, parts.rows)
    writes = Step(skus={"free": parts.writer.machine.skus["free"]})
    await faulty.commit(Step(), 0, {})  # no writes: not counted
    await faulty.commit(writes, 0, {})
    with pytest.raises(asyncpg.InternalClientError):
        await faulty.commit(writes, 0, {})
    assert len(parts.rows.committed) == 3  # committed all the same, as after a lost COMMIT answer


async def test_a_crash_after_commit_dies_after_the_commit(parts: Parts, monkeypatch: pytest.MonkeyPatch):
    def exit_(code: int) -> None:
        parts.log.append(f"exit {code}")  # the real one ends the process here
        raise SystemExit(code)

    monkeypatch.setattr(faults.os, "_exit", exit_)
    faulty = faults.with_faults(Settings(namespace="unit", crash_after_commit=1), parts.rows)
    parts.deliver([purchase("p1")])
    parts.writer.rows = faulty
    with pytest.raises(SystemExit) as died:
        await parts.writer.run_once()
    assert died.value.code == faults.EXIT_KILLED
    assert parts.log[:3] == ["progress", "commit", f"exit {faults.EXIT_KILLED}"]
