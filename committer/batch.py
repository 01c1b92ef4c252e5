"""One batch: the intents a fetch brings, and how the machine decides them into a committed Step.

A message (a packed batch of intents, or one intent) is decided as a unit, in one transaction
with the others fetched with it, and acked only after the commit, so a crash anywhere redelivers
it whole.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
from nats.aio.msg import Msg

from committer import metrics, store
from committer.machine import Machine
from committer.step import Step
from flashsale.logs import kv
from proto.messages import Decision, Intent, Purchase, stored_decoder, unpacked

log = logging.getLogger("committer")


class Unreader(Protocol):
    def unread(self, msgs: list[Msg]) -> None:
        """Hand messages back, to come first in the next fetch."""


@dataclass
class Batch:
    taken: list[Msg] = field(default_factory=list)  # every message taken into the batch
    decodable: list[Msg] = field(default_factory=list)  # acked once the batch is committed
    intents: list[Intent] = field(default_factory=list)
    # Where each new purchase's intent is stored: the payment token is read back from there.
    stored_at: dict[str, int] = field(default_factory=dict)

    @property
    def last_seq(self) -> int | None:
        """The highest intents stream sequence taken (None: no message)."""
        return max((m.metadata.sequence.stream for m in self.taken), default=None)


async def read(msgs: list[Msg], intents_max: int, puller: Unreader) -> Batch:
    """Whole messages until `intents_max` intents are reached; the rest of the fetch is handed
    back for the next batch. An undecodable message is terminated: not something ingest or the
    gateway sends, it must stay out of the loop for good."""
    batch = Batch()
    for n, msg in enumerate(msgs):
        if len(batch.intents) >= intents_max:
            puller.unread(msgs[n:])
            break
        batch.taken.append(msg)
        try:
            inside = unpacked(stored_decoder.decode(msg.data))
        except msgspec.DecodeError:
            log.error("undecodable intent terminated", extra=kv(subject=msg.subject))
            await msg.term()
            continue
        batch.intents += inside
        batch.decodable.append(msg)
        seq = msg.metadata.sequence.stream
        for intent in inside:
            if isinstance(intent, Purchase):
                batch.stored_at.setdefault(intent.id, seq)
    return batch


async def decide(
    machine: Machine, intents: list[Intent], t: int, commit: Callable[[Step], Awaitable[None]],
    lookup: Callable[[list[str]], Awaitable[list[Decision | Purchase]]], draws_held: bool = False,
) -> Step:
    """Decide a batch and commit it. A purchase id that Postgres turns out to hold already
    (another shard decided it, or holds it in its draw: a key reused with another SKU) is read
    back, the step taken back and the batch decided again, that intent refused. Every round
    learns at least one id of the batch that the next round no longer inserts, so this ends
    within the batch's size; a round that meets only ids already learned would repeat forever,
    and stops the writer instead (CorruptWrite: the machine ignored what Postgres holds)."""
    learned: dict[str, Decision | Purchase] = {}
    while True:
        step = machine.step(intents, t, draws_held=draws_held)
        try:
            await commit(step)
            return step
        except store.DecidedElsewhere as e:
            machine.undo()
            if learned.keys() >= set(e.ids):
                metrics.CONFLICTS_UNRESOLVED.labels(str(machine.shard)).inc()
                log.critical("a batch meets again ids it was told Postgres holds",
                             extra=kv(shard=machine.shard, ids=e.ids[:10], count=len(e.ids)))
                raise store.CorruptWrite(f"ids {e.ids[:10]} conflict again after being read") from e
            found = await lookup(e.ids)
            if len(found) != len(e.ids):
                # The insert met these rows, so they are committed: unreadable means broken.
                raise store.CorruptWrite(f"ids {e.ids} conflict but cannot be read") from e
            learned.update((d.id, d) for d in found)
            machine.found_in_postgres(list(learned.values()))


def announces(step: Step) -> bool:
    """Whether a step has anything for ingest to hear."""
    return bool(step.results or step.refusals or step.skus or step.admin_applied)
