"""What the committer does after a failure, and how it paces and reports its retries (pure).

Fencing and invariant violations stop the process (a supervisor decides what comes next); any
other exception means "rebuild from Postgres and carry on": the state in memory is thrown away
and rebuilt from what is committed, so no failure can leave it half-applied.
"""

from __future__ import annotations

from typing import Literal

from committer.step import InvariantViolation
from committer.store import CorruptWrite, Fenced
from flashsale.shardmap import ShardMapError

Verdict = Literal["fenced", "corrupt", "misconfigured", "rebuild"]
DependencyName = Literal["postgres", "nats"]

# Exit codes for a supervisor: 0 a clean stop, 2 configured unlike the system (its shard map),
# 3 another committer holds the shard (restarting makes this process a standby), 4 an invariant
# was about to break (investigate first).
EXIT_STOPPED = 0
EXIT_CONFIG = 2
EXIT_FENCED = 3
EXIT_CORRUPT = 4


def verdict_of(error: BaseException) -> Verdict:
    if isinstance(error, Fenced):
        return "fenced"
    if isinstance(error, (InvariantViolation, CorruptWrite)):
        return "corrupt"
    if isinstance(error, ShardMapError):
        return "misconfigured"
    return "rebuild"


def dependency_of(error: BaseException) -> DependencyName | None:
    """The server an exception is about, judged by the client library that raised it."""
    for e in _chain(error):
        module = type(e).__module__
        if module.startswith("asyncpg"):
            return "postgres"
        if module.startswith("nats"):
            return "nats"
    return None


def _chain(error: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = error
    while e is not None and len(out) < 8:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


# Doublings counted at most: past this the delay is max_s anyway, and 2.0 ** failures must
# not overflow in a streak that lasts days.
DOUBLINGS_MAX = 30


class Backoff:
    """Retry delays: first_s doubling up to max_s; `reset` after a success."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.failures = 0

    def next_s(self) -> float:
        delay_s = min(self.max_s, self.first_s * 2.0 ** min(self.failures, DOUBLINGS_MAX))
        self.failures += 1
        return delay_s

    def reset(self) -> None:
        self.failures = 0


class Dependency:
    """Up or down, so that a log line is written per change and not per failed retry."""

    def __init__(self, name: DependencyName) -> None:
        self.name = name
        self.up = True

    def lost(self) -> bool:
        """Mark it down; True if it was up (log "lost" now)."""
        changed, self.up = self.up, False
        return changed

    def back(self) -> bool:
        """Mark it up; True if it was down (log "back" now)."""
        changed, self.up = not self.up, True
        return changed
