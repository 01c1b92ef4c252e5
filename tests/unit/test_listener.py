"""The results listener against an in-memory JetStream: it listens from "now", feeds every
batch it can decode to the hub and remembers how far it got, resumes after a reconnect from the
first batch it has not seen (retrying while the server refuses), makes a new consumer when the
writers are heard but their results are not, and hears the writers' progress."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from nats.js.api import DeliverPolicy

from ingest import listener as listener_module
from ingest.listener import ResultsListener
from ingest.queue import ShardQueues
from ingest.results import ResultsHub
from proto.messages import Decision, Progress, ResultBatch, encode
from proto.subjects import Names

NAMES = Names("unit")
PID = "p_" + "a" * 30
CACHE_MAX = 100


class Sub:
    def __init__(self) -> None:
        self.unsubscribed = False

    async def unsubscribe(self) -> None:
        self.unsubscribed = True


class JetStream:
    """js.subscribe: records each consumer's config; the first `refusals` calls fail."""

    def __init__(self) -> None:
        self.configs: list[Any] = []
        self.subs: list[Sub] = []
        self.refusals = 0
        self.cb: Any = None

    async def subscribe(self, subject: str, *, stream: str, cb: Any, config: Any, **_: Any) -> Sub:
        assert (subject, stream) == (NAMES.results_all(), NAMES.results_stream)
        if self.refusals > 0:
            self.refusals -= 1
            raise ConnectionError("no responders")
        self.configs.append(config)
        self.cb = cb
        self.subs.append(Sub())
        return self.subs[-1]


class Nats:
    is_connected = True

    def __init__(self) -> None:
        self.core: dict[str, Any] = {}

    async def subscribe(self, subject: str, cb: Any) -> None:
        self.core[subject] = cb


def message(batch: ResultBatch | bytes, seq: int) -> Any:
    data = batch if isinstance(batch, bytes) else encode(batch)
    return SimpleNamespace(data=data, subject=NAMES.results_all(),
                           metadata=SimpleNamespace(sequence=SimpleNamespace(stream=seq)))


def decision() -> Decision:
    return Decision(id=PID, sku="s", user_id="u", qty=1, status="confirmed", reason=None,
                    amount_cents=1, accepted_at_ms=1, decided_at_ms=1, updated_at_ms=1)


@pytest.fixture
async def parts():
    hub = ResultsHub(CACHE_MAX, CACHE_MAX, queues=ShardQueues(2, CACHE_MAX, 60.0, CACHE_MAX, 0.0))
    nc, js = Nats(), JetStream()
    lst = ResultsListener(nc, js, NAMES, hub)  # type: ignore[arg-type]
    await lst.start()
    yield lst, hub, nc, js
    await lst.stop()


async def until(predicate: Any) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


async def test_batches_reach_the_hub_and_the_position_is_kept(parts):
    lst, hub, _, js = parts
    assert lst.listening and js.configs[0].deliver_policy == DeliverPolicy.NEW
    await js.cb(message(ResultBatch(shard=0, epoch=1, decisions=[decision()]), seq=7))
    await js.cb(message(b"\xc1 not msgpack", seq=8))  # skipped, still counted as seen
    await js.cb(message(ResultBatch(shard=1, epoch=1), seq=5))  # out of order: no step back
    assert hub.decision(PID) == decision() and lst.last_seq == 8


async def test_a_reconnect_resumes_from_the_first_batch_not_seen(parts):
    lst, _, _, js = parts
    await js.cb(message(ResultBatch(shard=0, epoch=1), seq=41))
    js.refusals = 2  # the server is still coming back
    lst.on_reconnected()
    lst.on_reconnected()  # one resubscription at a time
    await until(lambda: len(js.configs) == 2)
    assert js.subs[0].unsubscribed
    config = js.configs[1]
    assert (config.deliver_policy, config.opt_start_seq) == (DeliverPolicy.BY_START_SEQUENCE, 42)
    assert lst.listening


async def test_writers_heard_but_no_results_make_a_new_consumer(parts, monkeypatch):
    lst, hub, nc, js = parts
    await lst.stop()
    monkeypatch.setattr(listener_module, "STALE_S", 0.1)
    lst._last_result_s = 0.0  # long ago
    lst._watchdog = asyncio.create_task(lst._watch())
    await asyncio.sleep(0.15)
    assert len(js.configs) == 1  # writers silent too: nothing to resume
    await nc.core[NAMES.progress_all()](SimpleNamespace(data=encode(Progress(shard=1, epoch=1, taken_seq=9))))
    await until(lambda: len(js.configs) == 2)
    assert hub.queues._shards[1].taken_seq == 9
