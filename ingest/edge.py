"""The edge: how much of one ingest process a single client (an IP address) or buyer may hold,
and the file-descriptor budget every cap is sized from.

Every connection and every long-poll holds a file descriptor until it ends. Without caps, one
client with enough sockets fills the process's fd table: accepts fail, NATS and Postgres cannot
reconnect, /metrics stops answering. So:

- at start the soft RLIMIT_NOFILE is raised to the hard one, and `size_limits` derives every cap
  from the result, keeping `headroom` fds for NATS, Postgres, logs and accepts in flight;
- `GuardedProtocol` sits in front of aiohttp's protocol and closes a connection at once (an
  RST: no request is parsed, nothing is answered) when the process or that peer already
  holds its cap of connections; behind it, every request head of the connection is held to
  `head_max_bytes` (431) and HTTP/1.x as every port's are (flashsale.serving.HeadGuard);
- `BadRequestLog` turns aiohttp's traceback for every request it cannot parse into a counted,
  rate-limited refusal line (a client sending garbage must not flood the log);
- aiohttp's `keepalive_timeout` (`idle_timeout_s`) closes a connection idle between requests and
  one whose request head is not complete that long after it opened (the slow-head attack);
  `read_body` gives the body its own deadline (`body_timeout_s`, 408);
- `WaitBudget` caps the long-polls and event streams one client IP and one buyer hold (429),
  below the process's `waits_max` (beyond which requests are answered without waiting, see
  results.ResultsHub) and `sku_streams_max` (see events.Streams);
- `middleware` finds the client (the peer, or X-Forwarded-For from `trusted_proxies` only) and
  applies the per-client request rate (429).

Every refusal is counted in `flashsale_ingest_edge_refusals_total{reason}` and logged at most once
per client per `REFUSAL_LOG_INTERVAL_S`, so an attack is visible without flooding the log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import resource
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal, Protocol

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from config.settings import Settings
from flashsale import serving
from flashsale.logs import kv
from ingest import metrics, problems
from ingest.ratelimit import RateLimiter

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
# How long aiohttp drains a body it did not read (e.g. after a 408 or 413) before closing.
LINGER_S = 2.0
REFUSAL_LOG_INTERVAL_S = 10.0
# Rate refusals within a second after which a client's connections are closed and refused for
# its Retry-After (at least this many, and at least its burst).
FLOOD_REFUSALS_MIN = 20
# Idle connections looked at to choose the one closed for a new connection at the process's cap.
EVICT_SCAN_MAX = 32
# Clients remembered by the rate limiter and the refusal log (least recently seen forgotten).
CLIENTS_TRACKED_MAX = 100_000
# Probes are never rate limited: an orchestrator must see the process as it is. (/metrics is not
# on this port at all: ingest_metrics_port.)
RATE_EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})

Reason = Literal[
    "connections_total",  # the process holds connections_max connections
    "connections_client",  # this peer holds client_connections_max connections
    "connection_evicted",  # an idle connection of this peer was closed to admit a new one
    "waits_client",  # this client holds client_waits_max long-polls and streams
    "waits_buyer",  # this buyer holds buyer_waits_max long-polls
    "waits_total",  # the process holds waits_max long-polls: answered without waiting
    "sku_streams_total",  # the process holds sku_streams_max SKU streams: 503
    "sku_stream_slow",  # a SKU stream's client read too slowly: its stream was dropped
    "rate_client",  # this client exceeds client_rate_per_s
    "rate_client_connection",  # a client that kept asking through its 429s: connection reset
    "body_timeout",  # the body did not arrive within body_timeout_s
    "head_too_large",  # a request head exceeds head_max_bytes: 431, closed
    "bad_request_line",  # a request line that is not HTTP/1.x (HTTP/0.9, say): 400, closed
    "bad_request",  # aiohttp could not parse a request: its 400, closed
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# -- the fd budget -------------------------------------------------------------------------


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


# -- counting what clients hold ------------------------------------------------------------


class Counts:
    """How many of something each key holds, at most `per_key_max` each. A key holding nothing
    is forgotten, so memory is bounded by what is held, not by how many keys ever came."""

    def __init__(self, per_key_max: int) -> None:
        self.per_key_max = per_key_max
        self._held: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        held = self._held.get(key, 0)
        if held >= self.per_key_max:
            return False
        self._held[key] = held + 1
        return True

    def release(self, key: str) -> None:
        held = self._held.get(key, 0)
        if held <= 1:
            self._held.pop(key, None)
        else:
            self._held[key] = held - 1

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def __len__(self) -> int:
        return len(self._held)


class Evictable(Protocol):
    """A connection the guard may close to make room: its peer, and how to close it."""

    peer: str

    def evict(self) -> None: ...


class ConnectionGuard:
    """Open connections of the process and per peer address. A trusted proxy carries many
    clients on its connections, so only the process cap applies to it.

    At the process's cap a new connection is not refused while another is idle (no request in
    flight: between two requests of a kept-alive connection, or before its first head is
    complete): the idle connection goes instead, so idle connections held from many addresses
    cannot lock new clients out. Which one: among the EVICT_SCAN_MAX idle the longest, the one
    whose address holds the most connections (the furthest over a fair share), the longest
    idle of those first. A request in flight is never cut to make room."""

    def __init__(self, limits: EdgeLimits, trusted: Trusted) -> None:
        self.connections_max = limits.connections_max
        self.per_client = Counts(limits.client_connections_max)
        self.trusted = trusted
        self.open = 0
        self.closing = 0  # evicted, not yet gone: their fds are still open
        self._idle: OrderedDict[Evictable, None] = OrderedDict()  # longest idle first

    def admit(self, peer: str) -> Reason | None:
        """Count a new connection from `peer`, or the reason to close it at once."""
        trusted = self.trusted.has(peer)
        if not trusted and self.per_client.held(peer) >= self.per_client.per_key_max:
            return "connections_client"
        if self.open - self.closing >= self.connections_max and not self._make_room():
            return "connections_total"
        if not trusted:
            self.per_client.acquire(peer)
        self.open += 1
        return None

    def release(self, peer: str, evicted: bool) -> None:
        self.open -= 1
        if evicted:
            self.closing -= 1
        if not self.trusted.has(peer):
            self.per_client.release(peer)

    def idle(self, conn: Evictable) -> None:
        self._idle.pop(conn, None)
        self._idle[conn] = None

    def busy(self, conn: Evictable) -> None:
        self._idle.pop(conn, None)

    def _make_room(self) -> bool:
        victim: Evictable | None = None
        for conn in itertools.islice(self._idle, EVICT_SCAN_MAX):
            if victim is None or self.per_client.held(conn.peer) > self.per_client.held(victim.peer):
                victim = conn
        if victim is None:
            return False
        del self._idle[victim]
        self.closing += 1
        note_refusal("connection_evicted", victim.peer)
        victim.evict()
        return True


class WaitBudget:
    """What each client IP and buyer holds open waiting: long-polls and event streams of every
    kind (the process-wide caps are the hub's and the SKU feeds'). Over a cap the request is
    refused with a 429, so one client cannot take every slot. A SKU stream is public: counted
    against its client only."""

    def __init__(self, client_max: int, buyer_max: int, retry_after_s: int = 1) -> None:
        self.per_client = Counts(client_max)
        self.per_buyer = Counts(buyer_max)
        self.retry_after_s = retry_after_s

    @classmethod
    def for_limits(cls, limits: EdgeLimits, retry_after_s: int) -> WaitBudget:
        return cls(limits.client_waits_max, limits.buyer_waits_max, retry_after_s)

    def acquire(self, client: str | None, buyer: str | None) -> None:
        """Count one wait for `client` and `buyer` (None: not counted), or raise a 429."""
        if client is not None and not self.per_client.acquire(client):
            raise refused("waits_client", client, self.retry_after_s,
                          f"client {client} holds {self.per_client.per_key_max} long-polls and "
                          "streams already")
        if buyer is not None and not self.per_buyer.acquire(buyer):
            if client is not None:
                self.per_client.release(client)
            raise refused("waits_buyer", buyer, self.retry_after_s,
                          f"buyer {buyer!r} holds {self.per_buyer.per_key_max} long-polls already")

    def release(self, client: str | None, buyer: str | None) -> None:
        if client is not None:
            self.per_client.release(client)
        if buyer is not None:
            self.per_buyer.release(buyer)


# -- who the client is ---------------------------------------------------------------------


def _address(text: str) -> Address | None:
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class Trusted:
    """The proxies whose X-Forwarded-For is believed: `trusted_proxies`, comma-separated IPs
    and CIDRs."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)

    @classmethod
    def parse(cls, spec: str) -> Trusted:
        entries = [e.strip() for e in spec.split(",") if e.strip()]
        try:
            return cls(ipaddress.ip_network(e, strict=False) for e in entries)
        except ValueError as exc:
            raise ValueError(f"trusted_proxies: {exc}") from None

    def has(self, address: str | Address) -> bool:
        if not self.networks:
            return False
        addr = _address(address) if isinstance(address, str) else address
        return addr is not None and any(addr in net for net in self.networks)


def client_ip(peer: str, forwarded_for: Iterable[str], trusted: Trusted) -> str:
    """The client of a request: the peer, unless the peer is a trusted proxy; then the rightmost
    X-Forwarded-For address that is not a trusted proxy (the leftmost one if all are). Entries
    left of that one were written by the client itself and prove nothing."""
    if not trusted.has(peer):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    client = peer
    for hop in reversed(hops):
        addr = _address(hop)
        if addr is None:  # garbage a trusted proxy would not write: stop at the last good hop
            break
        client = str(addr)
        if not trusted.has(addr):
            break
    return client


CLIENT = web.RequestKey("edge_client", str)


def client_of(request: web.Request) -> str:
    """The client address `middleware` found for this request."""
    return request[CLIENT]


# -- refusals: counted, logged once per client per interval --------------------------------


class RefusalLog:
    """Whether to log a refusal now: the first one of a (reason, client) pair, then at most once
    per `interval_s` with the number refused meanwhile. Pure: the caller passes the clock."""

    def __init__(self, interval_s: float = REFUSAL_LOG_INTERVAL_S,
                 keys_max: int = CLIENTS_TRACKED_MAX) -> None:
        self.interval_s = interval_s
        self.keys_max = keys_max
        # (reason, client) -> (last logged at, refused since); least recently refused first.
        self._seen: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()

    def note(self, reason: str, client: str, now_s: float) -> int | None:
        """The refusals to report (this one included) if a line is due now, else None."""
        key = (reason, client)
        logged_at, since = self._seen.pop(key, (now_s - self.interval_s, 0))
        since += 1
        due = now_s - logged_at >= self.interval_s
        self._seen[key] = (now_s, 0) if due else (logged_at, since)
        if len(self._seen) > self.keys_max:
            self._seen.popitem(last=False)
        return since if due else None


_refusals = RefusalLog()


def note_refusal(reason: Reason, who: str, detail: str = "") -> None:
    """Count a refusal; log it if it is the first for `who` (a client IP, or a buyer for
    waits_buyer) and `reason` in REFUSAL_LOG_INTERVAL_S (`detail`: of the one logged)."""
    metrics.EDGE_REFUSALS.labels(reason).inc()
    count = _refusals.note(reason, who, time.monotonic())
    if count is not None:
        log.warning("edge refusal", extra=kv(reason=reason, who=who, refused=count,
                                             interval_s=REFUSAL_LOG_INTERVAL_S,
                                             **({"detail": detail} if detail else {})))


class BadRequestLog(logging.Filter):
    """On aiohttp's server logger: a request aiohttp cannot parse (it answers 400 and closes) is
    a refusal, counted and logged once per client per interval, without a traceback. Every other
    record (a handler's unexpected exception) passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        # aiohttp's message: "Error handling request from %s", the peer address.
        args = record.args if isinstance(record.args, tuple) else ()
        note_refusal("bad_request", str(args[0]) if args else "", detail=exc.message[:200])
        return False


def refused(reason: Reason, who: str, retry_after_s: int, detail: str,
            close: bool = False) -> problems.Rejection:
    """A 429 for a client or buyer over its share (counted and logged); `close`: and the
    connection closes after it."""
    note_refusal(reason, who)
    slug = "rate_limited" if reason == "rate_client" else "too_many_waits"
    return problems.Rejection(429, slug, "Too many requests", detail, retry_after_s=retry_after_s,
                              headers={"Connection": "close"} if close else None)


# -- the edge of one process ---------------------------------------------------------------


class Edge:
    """One ingest process's edge: its sized limits and what each client holds right now."""

    def __init__(self, settings: Settings, limits: EdgeLimits) -> None:
        self.limits = limits
        self.trusted = Trusted.parse(settings.trusted_proxies)
        self.body_timeout_s = settings.body_timeout_s
        self.retry_after_s = settings.retry_after_s
        self.connections = ConnectionGuard(limits, self.trusted)
        self.waits = WaitBudget.for_limits(limits, settings.retry_after_s)
        self.head_max_bytes = settings.head_max_bytes
        self.guard_answers = serving.guard_answers(settings.head_max_bytes)
        self.client_rate_per_s = settings.client_rate_per_s
        # None when configured off (client_rate_per_s = 0): load tests run from one address.
        self.rate = (
            RateLimiter(settings.client_rate_per_s, settings.client_burst, CLIENTS_TRACKED_MAX)
            if settings.client_rate_per_s > 0 else None
        )
        self.flooding = Flooding(max(FLOOD_REFUSALS_MIN, settings.client_burst))
        metrics.CONNECTIONS.set_function(lambda: self.connections.open)
        for name, value in msgspec.structs.asdict(limits).items():
            metrics.EDGE_LIMITS.labels(name).set(value)

    def admit_connection(self, peer: str) -> bool:
        if self.flooding.holds(peer, time.monotonic()):
            note_refusal("rate_client_connection", peer)
            return False
        reason = self.connections.admit(peer)
        if reason is None:
            return True
        note_refusal(reason, peer)
        return False

    def check_rate(self, client: str, direct: bool = True) -> None:
        """Apply the client's request rate (`direct`: the client is the connection's peer,
        not a client behind a trusted proxy)."""
        if self.rate is None:
            return
        now_s = time.monotonic()
        wait_s = self.rate.acquire(client, now_s)
        if not wait_s:
            return
        retry_after_s = RateLimiter.retry_after_s(wait_s)
        close = direct and self.flooding.refused(client, now_s, now_s + retry_after_s)
        raise refused(
            "rate_client", client, retry_after_s,
            f"client {client} sends requests faster than {self.client_rate_per_s:g}/s",
            close=close,
        )


class Flooding:
    """Clients that keep asking while told to wait. A client refused for its rate
    `refusals_max` times within a second gets its 429 with its connection closed, and its new
    connections are reset at accept until that 429's Retry-After has passed: refusing a
    connection costs the process a fraction of parsing a request to refuse it, so a flood of
    requests through 429s cannot take the CPU that other clients need. (An honest client a
    little over its rate sees a few refusals a second, not that many.) Only for a client that
    is its connection's peer: one behind a trusted proxy shares the proxy's connections, and
    its 429s stay 429s."""

    WINDOW_S = 1.0

    def __init__(self, refusals_max: int, keys_max: int = CLIENTS_TRACKED_MAX) -> None:
        self.refusals_max = refusals_max
        self.keys_max = keys_max
        # client -> (start of its window, refusals in it); least recently refused first
        self._refusals: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._benched: OrderedDict[str, float] = OrderedDict()  # client -> until (monotonic s)

    def refused(self, client: str, now_s: float, until_s: float) -> bool:
        """Count a refusal; True when the client is benched (its connection is to close)."""
        start_s, count = self._refusals.pop(client, (now_s, 0))
        if now_s - start_s >= self.WINDOW_S:
            start_s, count = now_s, 0
        self._refusals[client] = (start_s, count + 1)
        if len(self._refusals) > self.keys_max:
            self._refusals.popitem(last=False)
        if count + 1 < self.refusals_max:
            return False
        self._benched.pop(client, None)
        self._benched[client] = until_s
        if len(self._benched) > self.keys_max:
            self._benched.popitem(last=False)
        return True

    def holds(self, peer: str, now_s: float) -> bool:
        """Whether a new connection from `peer` is refused now."""
        if not self._benched:
            return False
        until_s = self._benched.get(peer)
        if until_s is None:
            return False
        if now_s < until_s:
            return True
        del self._benched[peer]
        self._refusals.pop(peer, None)
        return False


EDGE = web.AppKey("edge", Edge)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(edge: Edge) -> Middleware:
    """Finds the client of each request (`client_of`) and applies its request rate. Placed
    inside the admission middleware, which answers and counts the 429."""

    @web.middleware
    async def client_edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote or ""
        client = client_ip(peer, request.headers.getall("X-Forwarded-For", ()), edge.trusted)
        request[CLIENT] = client
        if request.path not in RATE_EXEMPT_PATHS:
            edge.check_rate(client, direct=client == peer)
        return await handler(request)

    return client_edge


async def read_body(request: web.Request) -> bytes:
    """The request body, or a 408 if it does not arrive within `body_timeout_s`: aiohttp's
    idle timeout does not run while a handler reads, so a trickled body would hold on for ever."""
    edge = request.app[EDGE]
    if request.content.is_eof():  # the whole body came with the head (nearly every purchase)
        return await request.read()  # no timer: arming one costs more than the read
    try:
        async with asyncio.timeout(edge.body_timeout_s):
            return await request.read()
    except TimeoutError:
        note_refusal("body_timeout", request.get(CLIENT) or request.remote or "")
        raise problems.Rejection(
            408, "request_timeout", "Request timeout",
            f"the request body did not arrive within {edge.body_timeout_s:g} s",
            headers={"Connection": "close"},
        ) from None


# -- the connection guard in front of aiohttp ----------------------------------------------


class GuardedProtocol(serving.HeadGuard):
    """One accepted connection: closed at once (an RST: nothing parsed, nothing answered) when
    its peer already holds its cap of connections, or the process does and none is idle (see
    ConnectionGuard); else served behind the head guard every port has (serving.HeadGuard),
    its refusals counted here, and offered to the ConnectionGuard whenever it is idle."""

    def __init__(self, make_handler: Callable[[], serving.ProblemRequestHandler], edge: Edge) -> None:
        super().__init__(make_handler, edge.head_max_bytes, edge.guard_answers)
        self._edge = edge
        self.peer = ""
        self._evicted = False

    def admit(self, transport: asyncio.Transport) -> bool:
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else ""
        if not self._edge.admit_connection(self.peer):
            serving.reset(transport)
            return False
        self._edge.connections.idle(self)  # nothing asked yet
        return True

    def released(self) -> None:
        self._edge.connections.busy(self)
        self._edge.connections.release(self.peer, self._evicted)

    def requests_changed(self, in_flight: int) -> None:
        if in_flight:
            self._edge.connections.busy(self)
        else:
            self._edge.connections.idle(self)

    def evict(self) -> None:
        """Close this idle connection (a FIN: the client's next request opens a new one)."""
        self._evicted = True
        if self._transport is not None:
            if self._transport.get_write_buffer_size():
                self._transport.abort()  # a client that does not read would keep it open
            else:
                self._transport.close()

    def refused(self, reason: serving.Refusal) -> None:
        detail = f"more than {self._edge.head_max_bytes} bytes before the blank line" \
            if reason == "head_too_large" else ""
        note_refusal(reason, self.peer, detail=detail)
