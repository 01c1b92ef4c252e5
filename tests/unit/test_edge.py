"""The edge's pure pieces: caps sized from an fd limit, what clients hold, who the client is."""

from __future__ import annotations

import msgspec
import pytest

from config.settings import load
from ingest import problems
from ingest.edge.clients import Trusted, client_ip
from ingest.edge.connections import ConnectionGuard
from ingest.edge.counts import Counts
from ingest.edge.flooding import Flooding
from ingest.edge.limits import FD_HEADROOM_MIN, size_limits
from ingest.edge.refusals import RefusalLog
from ingest.edge.waits import WaitBudget
from ingest.results import ResultsHub

DEFAULTS = load(env={}, file=None)


def test_caps_fit_the_fd_limit_with_headroom():
    limits = size_limits(DEFAULTS, 20_000)
    assert limits.fd_headroom == 1_000  # 5 % of 20 000, more than the minimum
    assert limits.connections_max == 19_000
    # waiters_max (50 000) would not fit: waits get three quarters of the connections.
    assert DEFAULTS.waiters_max > limits.fd_limit
    assert limits.waits_max == 14_250
    assert limits.client_connections_max == DEFAULTS.client_connections_max == 2_000
    assert limits.client_waits_max == DEFAULTS.client_waits_max
    assert limits.buyer_waits_max == DEFAULTS.buyer_waits_max
    assert limits.sku_streams_max == DEFAULTS.sku_streams_max == 10_000


def test_small_fd_limits_clamp_every_cap():
    limits = size_limits(DEFAULTS, 1_024)
    assert limits.fd_headroom == FD_HEADROOM_MIN
    assert limits.connections_max == 1_024 - FD_HEADROOM_MIN
    assert limits.client_connections_max == limits.connections_max  # 2 000 clamped to the total
    assert limits.waits_max == int(limits.connections_max * 0.75)
    assert limits.client_waits_max == min(DEFAULTS.client_waits_max, limits.waits_max)
    assert limits.sku_streams_max == limits.waits_max  # 10 000 clamped to the fd budget
    # Per-client caps never exceed the process's, and a buyer never more than its client.
    tiny = size_limits(DEFAULTS, 100)
    assert tiny.connections_max == 1 and tiny.waits_max == 1
    assert tiny.client_connections_max == tiny.client_waits_max == tiny.buyer_waits_max == 1


def test_large_fd_limits_keep_the_configured_caps():
    limits = size_limits(DEFAULTS, 1_048_576)
    assert limits.waits_max == DEFAULTS.waiters_max
    assert limits.client_connections_max == DEFAULTS.client_connections_max


def test_caps_below_one_are_refused_but_no_waiting_at_all_is_allowed():
    with pytest.raises(ValueError, match="client_waits_max"):
        size_limits(msgspec.structs.replace(DEFAULTS, client_waits_max=0), 20_000)
    limits = size_limits(msgspec.structs.replace(DEFAULTS, waiters_max=0), 20_000)
    assert limits.waits_max == limits.client_waits_max == limits.buyer_waits_max == 0


def test_counts_forget_keys_that_hold_nothing():
    counts = Counts(2)
    assert counts.acquire("a") and counts.acquire("a") and not counts.acquire("a")
    assert counts.acquire("b")
    counts.release("a")
    assert counts.held("a") == 1 and counts.acquire("a")
    for key in ("a", "a", "b"):
        counts.release(key)
    assert len(counts) == 0
    counts.release("never")  # releasing what is not held does not go negative
    assert counts.held("never") == 0


def test_connection_guard_caps_per_peer_and_in_total():
    limits = msgspec.structs.replace(size_limits(DEFAULTS, 20_000), connections_max=3,
                                     client_connections_max=2)
    guard = ConnectionGuard(limits, Trusted.parse("10.0.0.1"))
    assert guard.admit("127.0.0.2") is None and guard.admit("127.0.0.2") is None
    assert guard.admit("127.0.0.2") == "connections_client"
    assert guard.admit("127.0.0.3") is None
    assert guard.admit("127.0.0.4") == "connections_total"
    guard.release("127.0.0.2", evicted=False)
    assert guard.open == 2
    assert guard.admit("127.0.0.2") is None
    # A trusted proxy carries many clients: only the total applies to it.
    guard = ConnectionGuard(limits, Trusted.parse("10.0.0.1"))
    assert [guard.admit("10.0.0.1") for _ in range(3)] == [None, None, None]
    assert guard.admit("10.0.0.1") == "connections_total"
    guard.release("10.0.0.1", evicted=False)
    assert guard.open == 2 and len(guard.per_client) == 0


class Conn:
    def __init__(self, guard: ConnectionGuard, peer: str) -> None:
        self.guard = guard
        self.peer = peer
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True


def open_conn(guard: ConnectionGuard, peer: str, idle: bool = True) -> Conn:
    assert guard.admit(peer) is None
    conn = Conn(guard, peer)
    if idle:
        guard.idle(conn)
    return conn


def test_at_the_cap_an_idle_connection_of_the_busiest_address_makes_room():
    limits = msgspec.structs.replace(size_limits(DEFAULTS, 20_000), connections_max=6,
                                     client_connections_max=5)
    guard = ConnectionGuard(limits, Trusted.parse(""))
    buyer = open_conn(guard, "127.0.0.3")  # idle the longest, but its address holds one
    hogs = [open_conn(guard, "127.0.0.2") for _ in range(4)]
    polling = open_conn(guard, "127.0.0.4", idle=False)  # a request in flight: never cut
    assert guard.open == 6
    assert guard.admit("127.0.0.5") is None  # room made: the hog's longest idle goes
    assert hogs[0].evicted and not buyer.evicted and not polling.evicted
    assert guard.open == 7 and guard.closing == 1  # until the evicted one is gone
    guard.release("127.0.0.2", evicted=True)
    assert guard.open == 6 and guard.closing == 0
    guard.idle(hogs[1])  # idle again after a request: now the most recently idle of the hog
    assert guard.admit("127.0.0.6") is None and hogs[2].evicted and not hogs[1].evicted
    guard.release("127.0.0.2", evicted=True)
    # Nothing idle: refused.
    for conn in (buyer, *hogs):
        guard.busy(conn)
    assert guard.admit("127.0.0.7") == "connections_total"


def test_wait_budget_per_client_and_per_buyer():
    budget = WaitBudget(client_max=2, buyer_max=1, retry_after_s=3)
    budget.acquire("127.0.0.2", "alice")
    with pytest.raises(problems.Rejection) as refused:
        budget.acquire("127.0.0.3", "alice")
    assert refused.value.status == 429 and refused.value.slug == "too_many_waits"
    assert refused.value.retry_after_s == 3
    # The refused buyer's wait did not stay counted against its client.
    assert budget.per_client.held("127.0.0.3") == 0
    budget.acquire("127.0.0.2", None)
    with pytest.raises(problems.Rejection):
        budget.acquire("127.0.0.2", "bob")
    budget.acquire("127.0.0.3", "bob")
    budget.release("127.0.0.2", "alice")
    budget.acquire("127.0.0.2", "carol")
    budget.acquire(None, None)  # nothing to count against


async def test_hub_counts_waits_against_client_and_buyer():
    hub = ResultsHub(cache_max=10, waiters_max=10, waits=WaitBudget(client_max=2, buyer_max=5))
    with hub.watching("p1", True, client="127.0.0.2") as a, hub.watching("p2", True, client="127.0.0.2"):
        assert a is not None
        with pytest.raises(problems.Rejection):
            hub.watch("p3", client="127.0.0.2")
        with hub.watching("p3", True, client="127.0.0.3") as other:
            assert other is not None and hub.watch_count == 3
        with hub.watching("p3", False, client="127.0.0.2") as off:  # not waiting: not counted
            assert off is None
    assert hub.watch_count == 0 and len(hub.waits.per_client) == 0
    # Beyond the process cap a request is answered without waiting, never refused.
    hub = ResultsHub(cache_max=10, waiters_max=1, waits=WaitBudget(client_max=5, buyer_max=5))
    with hub.watching("p1", True, client="a") as first, hub.watching("p2", True, client="a") as second:
        assert first is not None and second is None and hub.waits.per_client.held("a") == 1


TRUSTED = Trusted.parse("10.0.0.0/8, 192.168.1.2, ::1")


@pytest.mark.parametrize(("peer", "xff", "client"), [
    # Untrusted peer: its X-Forwarded-For proves nothing.
    ("127.0.0.2", ["1.2.3.4"], "127.0.0.2"),
    ("127.0.0.2", [], "127.0.0.2"),
    # Trusted proxy: the rightmost hop it did not add itself.
    ("10.1.1.1", ["1.2.3.4"], "1.2.3.4"),
    ("10.1.1.1", ["6.6.6.6, 1.2.3.4"], "1.2.3.4"),  # the client wrote 6.6.6.6 itself
    ("10.1.1.1", ["6.6.6.6, 1.2.3.4, 10.2.2.2"], "1.2.3.4"),  # through two trusted proxies
    ("10.1.1.1", ["6.6.6.6", "1.2.3.4, 192.168.1.2"], "1.2.3.4"),  # several header lines
    ("10.1.1.1", ["10.3.3.3, 10.2.2.2"], "10.3.3.3"),  # all trusted: the leftmost
    ("10.1.1.1", [], "10.1.1.1"),  # no header: the proxy itself
    ("10.1.1.1", ["junk, 1.2.3.4"], "1.2.3.4"),
    ("10.1.1.1", ["1.2.3.4, junk"], "10.1.1.1"),  # garbage where the proxy writes: not believed
    ("10.1.1.1", [" 2001:db8::1 "], "2001:db8::1"),
    ("::1", ["::ffff:1.2.3.4"], "1.2.3.4"),  # IPv4-mapped is the IPv4 client
    ("::ffff:10.0.0.5", ["1.2.3.4"], "1.2.3.4"),
])
def test_client_ip_believes_forwarded_for_from_trusted_proxies_only(peer, xff, client):
    assert client_ip(peer, xff, TRUSTED) == client


def test_no_trusted_proxies_means_the_peer():
    assert client_ip("10.1.1.1", ["1.2.3.4"], Trusted.parse("")) == "10.1.1.1"
    with pytest.raises(ValueError, match="trusted_proxies"):
        Trusted.parse("10.0.0.0/8, not-an-ip")


def test_refusals_are_logged_once_per_client_per_interval():
    log = RefusalLog(interval_s=10.0, keys_max=2)
    assert log.note("rate_client", "a", 100.0) == 1
    assert log.note("rate_client", "a", 101.0) is None
    assert log.note("rate_client", "a", 105.0) is None
    assert log.note("rate_client", "b", 105.0) == 1  # another client has its own line
    assert log.note("rate_client", "a", 110.0) == 3  # this one and the two kept quiet
    assert log.note("rate_client", "a", 111.0) is None
    log.note("waits_client", "c", 111.0)  # a third key: the least recently refused is forgotten
    assert log.note("rate_client", "b", 112.0) == 1


def test_a_client_that_keeps_asking_through_its_429s_is_refused_at_accept_until_its_retry_after():

    flooding = Flooding(refusals_max=3)
    assert [flooding.refused("127.0.0.2", now_s=0.1 * n, until_s=10.0) for n in range(2)] == [False] * 2
    # A new second: the count starts again (an honest client a little over its rate).
    assert not flooding.refused("127.0.0.2", now_s=1.0, until_s=10.0)
    assert [flooding.refused("127.0.0.2", now_s=1.1, until_s=10.0) for _ in range(2)] == [False, True]
    assert flooding.holds("127.0.0.2", now_s=9.9) and not flooding.holds("127.0.0.3", now_s=9.9)
    assert not flooding.holds("127.0.0.2", now_s=10.0)  # its Retry-After has passed
    assert not flooding.refused("127.0.0.2", now_s=10.0, until_s=20.0)  # and it starts from nothing
