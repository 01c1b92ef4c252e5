"""What the committer does after a failure (committer/recovery.py): pure, no servers."""

from __future__ import annotations

import asyncpg
import nats.errors

from committer.recovery import Backoff, Dependency, dependency_of, verdict_of
from committer.step import InvariantViolation
from committer.store import CorruptWrite, Fenced


def test_only_fencing_and_invariants_stop_the_process():
    assert verdict_of(Fenced("epoch moved on")) == "fenced"
    assert verdict_of(InvariantViolation("oversell")) == "corrupt"
    assert verdict_of(CorruptWrite("row exists")) == "corrupt"
    # The one that killed the process when the postmaster was killed mid-COMMIT.
    assert verdict_of(asyncpg.InternalClientError("cannot switch to state 15")) == "rebuild"
    for other in (OSError("refused"), TimeoutError(), asyncpg.AdminShutdownError("bye"),
                  asyncpg.InterfaceError("closed"), RuntimeError("a bug"), KeyError("x")):
        assert verdict_of(other) == "rebuild", other


def test_dependency_is_judged_by_the_library_that_raised():
    assert dependency_of(asyncpg.InternalClientError("x")) == "postgres"
    assert dependency_of(asyncpg.ConnectionDoesNotExistError("x")) == "postgres"
    assert dependency_of(nats.errors.TimeoutError()) == "nats"
    assert dependency_of(RuntimeError("a bug")) is None
    try:
        try:
            raise asyncpg.AdminShutdownError("terminated")
        except asyncpg.PostgresError as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as wrapped:
        assert dependency_of(wrapped) == "postgres"


def test_backoff_doubles_up_to_its_bound_and_resets():
    b = Backoff(0.1, 1.0)
    assert [b.next_s() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next_s() == 0.1
    many = Backoff(0.1, 5.0)
    assert max(many.next_s() for _ in range(200)) == 5.0


def test_dependency_reports_each_change_once():
    pg = Dependency("postgres")
    assert not pg.back()  # up from the start: nothing to say
    assert pg.lost() and not pg.lost() and not pg.lost()  # one "lost" for many failed retries
    assert pg.back() and not pg.back()
