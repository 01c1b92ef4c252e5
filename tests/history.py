"""One history checker for every fault scenario: what buyers were promised (202s), what the
committers announced (the RESULTS stream, read from its start) and what Postgres holds must tell
one story.

- every accepted id reaches a final state in Postgres, or `reserved` with a deadline;
- no id gets two different decisions anywhere: every announcement of an id carries the first
  decision Postgres holds (same status, reason and decision time), and every later state it
  announces (a reservation confirmed, expired, cancelled) is the one Postgres holds once final;
- nothing announced that Postgres does not hold (a fenced writer announces nothing);
- each SKU's counters equal the sums of its purchase rows; nothing oversold; caps hold.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg
import nats
from nats.js.api import DeliverPolicy

from committer.schema import PURCHASE_COLUMNS, decision_of
from config.settings import Settings
from proto.messages import FINAL_STATUSES, Decision, ResultBatch, result_decoder


@dataclass
class Announced:
    """The RESULTS stream of one test namespace, from its first message to its last."""

    batches: list[ResultBatch] = field(default_factory=list)

    @property
    def heartbeats(self) -> int:
        return sum(1 for b in self.batches if not (b.decisions or b.skus or b.refusals or b.admin_applied))

    def decisions(self) -> dict[str, list[Decision]]:
        out: dict[str, list[Decision]] = {}
        for b in self.batches:
            for d in b.decisions:
                out.setdefault(d.id, []).append(d)
        return out

    def epochs(self) -> dict[int, list[int]]:
        """Per shard, the epochs that announced anything, in the order first seen."""
        out: dict[int, list[int]] = {}
        for b in self.batches:
            seen = out.setdefault(b.shard, [])
            if b.epoch not in seen:
                seen.append(b.epoch)
        return out


async def read_results(settings: Settings, timeout_s: float = 20.0) -> Announced:
    """Every message of the namespace's RESULTS stream, by sequence, with an ordered consumer."""
    names = settings.names
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        last_seq = (await js.stream_info(names.results_stream)).state.last_seq
        announced = Announced()
        if last_seq == 0:
            return announced
        sub = await js.subscribe(names.results_all(), ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.ALL)
        deadline = time.monotonic() + timeout_s
        seq = 0
        while seq < last_seq:
            msg = await sub.next_msg(timeout=max(0.1, deadline - time.monotonic()))
            seq = msg.metadata.sequence.stream
            announced.batches.append(result_decoder.decode(msg.data))
        await sub.unsubscribe()
        return announced
    finally:
        await nc.close()


def _settled(d: Decision) -> bool:
    return d.status in FINAL_STATUSES or (d.status == "reserved" and d.expires_at_ms is not None)


async def wait_settled(db: asyncpg.Connection, ids: set[str], timeout_s: float = 90.0) -> dict[str, Decision]:
    """The rows of `ids` once every one is final (or reserved with a deadline)."""
    deadline = time.monotonic() + timeout_s
    rows: dict[str, Decision] = {}
    while time.monotonic() < deadline:
        got = await db.fetch(f"SELECT {PURCHASE_COLUMNS} FROM purchases WHERE id = ANY($1)", list(ids))
        rows = {r["id"]: decision_of(r) for r in got}
        if len(rows) == len(ids) and all(_settled(d) for d in rows.values()):
            return rows
        await asyncio.sleep(0.25)
    missing = ids - set(rows)
    unsettled = [i for i, d in rows.items() if not _settled(d)]
    raise AssertionError(f"{len(missing)} accepted purchases never decided (e.g. {sorted(missing)[:3]}), "
                         f"{len(unsettled)} not settled (e.g. {unsettled[:3]})")


def first_decision(d: Decision) -> tuple[str, str | None]:
    """What was decided when the purchase was first decided. Only a reservation changes later,
    always in a later batch (so at a later millisecond than its decision)."""
    return (d.status, d.reason) if d.updated_at_ms == d.decided_at_ms else ("reserved", None)


def check_announcements(announced: dict[str, list[Decision]], stored: dict[str, Decision]) -> None:
    """Every announced decision is the one Postgres holds: one decision per id, anywhere."""
    for pid, seen in announced.items():
        row = stored.get(pid)
        assert row is not None, f"{pid} announced ({seen[0].status}) but not in Postgres"
        later: set[tuple[str, str | None]] = set()
        for d in seen:
            assert d.decided_at_ms == row.decided_at_ms, (pid, d, row)
            if d.updated_at_ms == d.decided_at_ms:
                assert (d.status, d.reason) == first_decision(row), (pid, d, row)
            else:
                assert d.status in FINAL_STATUSES, (pid, d)
                later.add((d.status, d.reason))
        assert len(later) <= 1, f"{pid} announced two different outcomes: {later}"
        if later:  # announced only once committed, and a final state never changes again
            assert later == {(row.status, row.reason)}, (pid, later, row)


async def check_stored(db: asyncpg.Connection) -> None:
    """Counters equal the sums of the rows, nothing oversold, caps hold: every SKU."""
    for sku in await db.fetch(
        """SELECT s.sku, s.stock, s.reserved, s.sold, s.max_per_user,
                  coalesce(sum(p.qty) FILTER (WHERE p.status = 'reserved'), 0) AS rows_reserved,
                  coalesce(sum(p.qty) FILTER (WHERE p.status = 'confirmed'), 0) AS rows_sold
           FROM skus s LEFT JOIN purchases p ON p.sku = s.sku GROUP BY s.sku"""
    ):
        assert (sku["reserved"], sku["sold"]) == (sku["rows_reserved"], sku["rows_sold"]), dict(sku)
        assert sku["reserved"] + sku["sold"] <= sku["stock"], dict(sku)
    over = await db.fetch(
        """SELECT p.sku, p.user_id, sum(p.qty) AS qty, s.max_per_user FROM purchases p
           JOIN skus s ON s.sku = p.sku
           WHERE p.status IN ('reserved', 'confirmed') AND s.max_per_user IS NOT NULL
           GROUP BY p.sku, p.user_id, s.max_per_user HAVING sum(p.qty) > s.max_per_user"""
    )
    assert not over, [dict(r) for r in over[:3]]
    orphans = await db.fetchval(
        "SELECT count(*) FROM purchases p WHERE NOT EXISTS (SELECT 1 FROM skus s WHERE s.sku = p.sku)"
        " AND p.status IN ('reserved', 'confirmed')"
    )
    assert orphans == 0


async def check_history(db: asyncpg.Connection, settings: Settings, accepted: Iterable[str],
                        timeout_s: float = 90.0) -> dict[str, object]:
    """The whole check, after a scenario: `accepted` are the ids buyers got a 202 (or 200) for."""
    accepted_ids = set(accepted)
    await wait_settled(db, accepted_ids, timeout_s)
    await check_stored(db)
    announced = await read_results(settings)
    decisions = announced.decisions()
    # Read after the stream: whatever it announced was committed before it was published.
    got = await db.fetch(f"SELECT {PURCHASE_COLUMNS} FROM purchases WHERE id = ANY($1)",
                         list(set(decisions) | accepted_ids))
    check_announcements(decisions, {r["id"]: decision_of(r) for r in got})
    return {
        "accepted": len(accepted_ids), "announced_ids": len(decisions),
        "batches": len(announced.batches), "heartbeats": announced.heartbeats,
        "epochs": announced.epochs(),
    }
