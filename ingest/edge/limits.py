"""The fd budget of one ingest process and every cap sized from it.

Every connection and every long-poll holds a file descriptor until it ends. Without caps, one
client with enough sockets fills the process's fd table: accepts fail, NATS and Postgres cannot
reconnect, /metrics stops answering. So at start the soft RLIMIT_NOFILE is raised to the hard
one, and `size_limits` derives every cap from the result, keeping a headroom of fds for NATS,
Postgres, logs and accepts in flight.
"""

from __future__ import annotations

import logging
import resource

import msgspec

from config.settings import Settings
from flashsale.logs import kv

log = logging.getLogger("ingest.edge")

# fds kept free of client connections: NATS, the Postgres pool, stdio and logs, the listening
# sockets, and connections accepted only to be closed at once. The larger of the two.
FD_HEADROOM_MIN = 256
FD_HEADROOM_FRACTION = 0.05
# Share of the connection budget long-polls may take: the rest stays free for requests that
# answer at once (buying, /readyz, /metrics), so waiters alone can never fill the box.
WAITS_SHARE = 0.75
# Pending connections the kernel queues for accept (clamped by net.core.somaxconn).
ACCEPT_BACKLOG = 1024
# Clients remembered by the rate limiter, the flood bench and the refusal log (least recently
# seen forgotten).
CLIENTS_TRACKED_MAX = 100_000


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # e.g. a hard limit above the kernel's nr_open
            log.warning("cannot raise the fd limit", extra=kv(soft=soft, hard=hard, error=repr(exc)))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class EdgeLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The caps of one ingest process, as sized from its fd limit at start."""

    fd_limit: int
    fd_headroom: int
    connections_max: int  # open client connections, all clients together
    client_connections_max: int  # per peer address (a trusted proxy is exempt)
    waits_max: int  # long-polls and event streams, all clients together
    client_waits_max: int  # per client IP: long-polls, purchase streams and SKU streams together
    buyer_waits_max: int  # per buyer
    sku_streams_max: int  # SKU event streams, all clients together


def size_limits(settings: Settings, fd_limit: int) -> EdgeLimits:
    """Every cap fits in the fd budget, and no per-client cap exceeds the process's cap.
    (waiters_max = 0 is allowed: every request is then answered without waiting.)"""
    for name in ("client_connections_max", "client_waits_max", "buyer_waits_max"):
        if getattr(settings, name) < 1:
            raise ValueError(f"{name} must be >= 1")
    headroom = max(FD_HEADROOM_MIN, int(fd_limit * FD_HEADROOM_FRACTION))
    connections_max = max(1, fd_limit - headroom)
    waits_max = min(settings.waiters_max, max(1, int(connections_max * WAITS_SHARE)))
    client_connections_max = min(settings.client_connections_max, connections_max)
    client_waits_max = min(settings.client_waits_max, waits_max, client_connections_max)
    return EdgeLimits(
        fd_limit=fd_limit, fd_headroom=headroom, connections_max=connections_max,
        client_connections_max=client_connections_max, waits_max=waits_max,
        client_waits_max=client_waits_max,
        buyer_waits_max=min(settings.buyer_waits_max, client_waits_max),
        sku_streams_max=min(settings.sku_streams_max, waits_max),
    )
