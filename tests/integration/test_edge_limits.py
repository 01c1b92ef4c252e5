"""Edge limits against real ingest processes: no single client can
take the process's file descriptors, connections or waiter slots. Distinct loopback addresses
act as distinct clients (127.0.0.2 attacks, 127.0.0.3 buys)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Literal

import aiohttp
import msgspec

from launch import processes as procs
from tests.auth import bearer, token
from tests.conftest import seed_sku
from tests.integration.test_ingest_api import intents_count
from tests.integration.test_ingest_flow import Client
from tests.util import eventually

ATTACKER, BUYER, OTHER, PROXY = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
PROBLEM = "application/problem+json"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: ingest\r\n\r\n"
# Starts ingest with a low soft fd limit under a given hard limit: ingest raises soft to hard.
_LIMITED = (
    "import resource, runpy; resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
    "runpy.run_module('ingest', run_name='__main__', alter_sys=True)"
)


def start_limited_ingest(system, settings, soft: int, hard: int) -> procs.Process:
    plain = procs.ingest(settings, system.log_dir)
    p = procs.Process(plain.name, [sys.executable, "-c", _LIMITED.format(soft=soft, hard=hard)],
                      plain.env, plain.log_path).start()
    system.processes[p.name] = p
    p.wait_http_ok(procs.ingest_ready_url(settings))
    return p


def session(local_ip: str, **connector) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(local_ip, 0), **connector))


async def raw(settings, local_ip: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(settings.ingest_host, settings.ingest_port,
                                         local_addr=(local_ip, 0))


Closed = Literal["eof", "reset"]


async def closed_by_server(reader: asyncio.StreamReader, timeout_s: float) -> Closed | None:
    """How the server closed within `timeout_s` (None: still open): "reset" is the edge's abort
    (an RST), "eof" an orderly close (aiohttp's deadlines). What it sends is discarded."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
        return "eof"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except TimeoutError:
        return None


async def healthz_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(HEALTHZ)
    await writer.drain()
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    return head.split(b"\r\n")[0]


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_fd_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no 'Max open files' in /proc/<pid>/limits")


async def metric(http: aiohttp.ClientSession, settings, name: str) -> dict[str, float]:
    """Samples of one metric family from the /metrics of the ingest started with `settings`,
    keyed by their label text."""
    async with http.get(procs.ingest_metrics_url(settings)) as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key[len(name):]] = float(value)
    return out


def refusals(samples: dict[str, float], reason: str) -> float:
    return samples.get(f'{{reason="{reason}"}}', 0.0)


async def test_slow_heads_and_idle_polls_from_one_client_do_not_take_the_process(system, settings):
    """5,000 slow-head connections and 1,500 idle long-polls from one address, more than the
    process's 6,000 fds in total, while another address buys: the buyer's purchases succeed and
    the process never reaches its fd limit."""
    s = msgspec.structs.replace(settings, idle_timeout_s=8.0)
    system.settings = s
    system.start(ingest=False)
    ingest = start_limited_ingest(system, s, soft=1024, hard=6000)
    assert proc_fd_limit(ingest.proc.pid) == 6000  # soft raised to hard at start
    base = system.base_url
    polls_n, heads_n, attack_s = 1500, 5000, 14.0
    async with session("127.0.0.1") as ops, session(BUYER) as buyer_http, \
            session(ATTACKER, limit=0) as attacker:
        admin = Client(ops, base, s.admin_token)
        # A reserved purchase stays reserved (no gateway): long-polls on it wait their full 30 s.
        # A buyer may only poll their own purchases, and only buyer_waits_max at once: the
        # attacker holds many accounts, each with a purchase of its own.
        status, _, _ = await admin.put_sku("idle", stock=1000, price_cents=100, payment="required",
                                           reservation_ttl_s=600)
        assert status == 200
        status, _, _ = await admin.put_sku("hot", stock=100_000, price_cents=100, payment="none")
        assert status == 200
        held: list[tuple[str, str]] = []  # (buyer, purchase id)
        for i in range(polls_n // s.buyer_waits_max):
            status, _, p = await admin.buy("idle", f"holder-{i}", "k1", payment_token="tok_visa")
            assert status == 200 and p["status"] == "reserved", p
            held.append((f"holder-{i}", p["id"]))
        limits = await metric(ops, s, "flashsale_ingest_edge_limit")
        client_waits_max = limits['{limit="client_waits_max"}']
        print(f"\nedge limits: {limits}")

        fd_peak = 0

        async def sample_fds() -> None:
            nonlocal fd_peak
            while True:
                fd_peak = max(fd_peak, proc_fds(ingest.proc.pid))
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample_fds())

        async def poll(n: int) -> int | str:
            user, pid = held[n % len(held)]
            try:
                async with attacker.get(f"{base}/v1/purchases/{pid}?wait=30", headers=bearer(user)) as r:
                    await r.read()
                    return r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                return type(exc).__name__

        polls = [asyncio.create_task(poll(n)) for n in range(polls_n)]

        async def waiting() -> bool:
            got = await metric(ops, s, "flashsale_ingest_waiters")
            return got.get("", 0) >= client_waits_max

        await eventually(waiting, timeout_s=30)

        started = time.monotonic()
        head = b"GET /v1/skus/hot HTTP/1.1\r\nHost: ingest\r\nX-Slow: " + b"a" * 4000

        async def slow_head() -> tuple[str, float]:
            """Send a head a byte per second until the server closes: (how, seconds open)."""
            try:
                reader, writer = await raw(s, ATTACKER)
            except ConnectionResetError:  # the RST can beat the client's connect call
                return "reset", 0.0
            except OSError as exc:
                return f"connect failed: {exc!r}", 0.0
            opened = time.monotonic()
            try:
                for byte in head:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    closed = await closed_by_server(reader, 1.0)
                    if closed is not None:
                        return closed, time.monotonic() - opened
                    if time.monotonic() - started > attack_s + s.idle_timeout_s:
                        break
            except (ConnectionResetError, BrokenPipeError):
                return "reset", time.monotonic() - opened
            finally:
                writer.close()
            return "never closed", time.monotonic() - opened

        heads = [asyncio.create_task(slow_head()) for _ in range(heads_n)]
        await asyncio.sleep(1.0)

        # The buyer, meanwhile, from its own address.
        buyer = Client(buyer_http, base, s.admin_token)
        latencies_ms: list[float] = []
        statuses: list[tuple[int, str]] = []
        n = 0
        while time.monotonic() - started < attack_s - 2:
            t0 = time.perf_counter()
            status, _, p = await buyer.buy("hot", f"buyer-{n}", f"k{n}", wait_s=5)
            latencies_ms.append((time.perf_counter() - t0) * 1000)
            statuses.append((status, p.get("status", p.get("type", ""))))
            n += 1
        async with buyer_http.get(procs.ingest_metrics_url(s)) as r:
            metrics_status = r.status
        fds_during = proc_fds(ingest.proc.pid)

        outcomes = await asyncio.gather(*heads)
        sampler.cancel()
        samples = await metric(ops, s, "flashsale_ingest_edge_refusals_total")
        for t in polls:
            t.cancel()
        await asyncio.gather(*polls, return_exceptions=True)

    closed_at_once = sorted(t for how, t in outcomes if how == "reset")  # the edge's abort
    held_then_closed = sorted(t for how, t in outcomes if how == "eof")  # the head deadline
    latencies_ms.sort()
    print(f"buyer: {len(statuses)} purchases, latency ms p50={latencies_ms[len(latencies_ms) // 2]:.1f} "
          f"p99={latencies_ms[int(len(latencies_ms) * 0.99)]:.1f} max={latencies_ms[-1]:.1f}")
    print(f"slow heads: {len(closed_at_once)} closed at once, {len(held_then_closed)} held then "
          f"closed (min {held_then_closed[0] if held_then_closed else 0:.1f} s, max "
          f"{held_then_closed[-1] if held_then_closed else 0:.1f} s; idle_timeout_s="
          f"{s.idle_timeout_s}), closed at once within {closed_at_once[-1] if closed_at_once else 0:.2f} s, "
          f"other: {[o for o in outcomes if o[0] not in ('eof', 'reset')][:5]}")
    print(f"ingest fds: peak {fd_peak}, during buying {fds_during}, limit 6000; "
          f"refusals {samples}")
    assert statuses and all(st == (200, "confirmed") for st in statuses), statuses
    assert metrics_status == 200
    assert fd_peak < proc_fd_limit(ingest.proc.pid)
    assert len(closed_at_once) + len(held_then_closed) == heads_n  # ingest closed every one
    assert closed_at_once and held_then_closed
    assert refusals(samples, "connections_client") == len(closed_at_once)
    assert refusals(samples, "waits_client") >= polls_n - client_waits_max


async def test_connections_beyond_the_per_client_cap_are_closed_at_once(system, settings):
    s = msgspec.structs.replace(settings, client_connections_max=20)
    system.start_ingest(s)
    held = [await raw(s, ATTACKER) for _ in range(20)]
    for reader, writer in held:  # every one of them is served
        assert await healthz_on(reader, writer) == b"HTTP/1.1 200 OK"
    t0 = time.monotonic()
    try:
        reader, writer = await raw(s, ATTACKER)
        assert await closed_by_server(reader, 10.0) == "reset"
        writer.close()
    except ConnectionResetError:  # the RST can beat the client's connect call
        pass
    print(f"\n21st connection from {ATTACKER} reset after {(time.monotonic() - t0) * 1000:.1f} ms")
    other_reader, other_writer = await raw(s, OTHER)
    assert await healthz_on(other_reader, other_writer) == b"HTTP/1.1 200 OK"
    other_writer.close()
    # A connection closed by the client gives its slot back.
    held[0][1].close()

    async def admitted_again() -> bool:
        try:
            reader, writer = await raw(s, ATTACKER)
        except ConnectionResetError:
            return False
        try:
            return await healthz_on(reader, writer) == b"HTTP/1.1 200 OK"
        except (ConnectionResetError, asyncio.IncompleteReadError):
            return False
        finally:
            writer.close()

    assert await eventually(admitted_again, timeout_s=10)
    async with session("127.0.0.1") as ops:
        samples = await metric(ops, s, "flashsale_ingest_edge_refusals_total")
    assert refusals(samples, "connections_client") >= 1
    for _, w in held:
        w.close()


async def test_heads_bodies_and_idle_connections_have_deadlines(system, settings):
    s = msgspec.structs.replace(settings, idle_timeout_s=2.0, body_timeout_s=1.0)
    system.start_ingest(s)
    head = b"GET /healthz HTTP/1.1\r\nHost: ingest\r\nX-Slow: " + b"a" * 1000

    # A head trickled a byte per 0.25 s never completes: closed about idle_timeout_s after opening.
    reader, writer = await raw(s, ATTACKER)
    t0, sent = time.monotonic(), 0
    for byte in head:
        writer.write(bytes([byte]))
        sent += 1
        if await closed_by_server(reader, 0.25) == "eof":
            break
    else:
        raise AssertionError("a head trickled for 250 s was never closed")
    print(f"\nslow head closed after {time.monotonic() - t0:.2f} s ({sent} bytes sent), "
          f"idle_timeout_s={s.idle_timeout_s}")
    writer.close()

    # A connection that sends nothing, and one idle after its first response.
    for first in (b"", HEALTHZ):
        reader, writer = await raw(s, ATTACKER)
        if first:
            assert await healthz_on(reader, writer) == b"HTTP/1.1 200 OK"
        t0 = time.monotonic()
        assert await closed_by_server(reader, 30.0) == "eof"
        print(f"{'idle keep-alive' if first else 'silent'} connection closed after "
              f"{time.monotonic() - t0:.2f} s")
        writer.close()

    # A body that stops arriving: 408 problem+json, and the connection is closed.
    reader, writer = await raw(s, ATTACKER)
    writer.write(b"POST /v1/purchases HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + token("slow").encode() + b"\r\n"
                 b"Content-Length: 60\r\n\r\n{\"sku\": \"a\"")
    await writer.drain()
    t0 = time.monotonic()
    async with asyncio.timeout(30):
        answer = await reader.readuntil(b"\r\n\r\n")
        answered_s = time.monotonic() - t0
        answer += await reader.read()  # to EOF: the server answers, then closes
    print(f"stalled body answered after {answered_s:.2f} s (body_timeout_s={s.body_timeout_s}), "
          f"connection closed after {time.monotonic() - t0:.2f} s")
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", answer
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert PROBLEM.encode() in headers and b"connection: close" in headers.lower()
    assert json.loads(body)["type"].endswith("/request_timeout")
    writer.close()


async def test_per_client_and_per_buyer_wait_caps(system, settings):
    s = msgspec.structs.replace(settings, client_waits_max=3, buyer_waits_max=2)
    await seed_sku(s, "s1", stock=100)
    system.start_ingest(s)  # no committers: purchases stay pending
    base = system.base_url
    async with session(ATTACKER, limit=0) as attacker, session(BUYER, limit=0) as buyer, \
            session(OTHER, limit=0) as other, session("127.0.0.1") as ops:
        async def create(http, user: str) -> str:
            async with http.post(f"{base}/v1/purchases", json={"sku": "s1", "qty": 1},
                                 headers=bearer(user)) as r:
                assert r.status == 202
                return str((await r.json())["id"])

        # Per client address: four buyers behind the attacker's address, one purchase each.
        mine = {u: await create(attacker, u) for u in ("a1", "a2", "a3", "a4", "b1")}

        async def get(http, user, wait_s):
            async with http.get(f"{base}/v1/purchases/{mine[user]}?wait={wait_s}",
                                headers=bearer(user)) as r:
                return r.status, r.headers.copy(), await r.json(content_type=None)

        polls = [asyncio.create_task(get(attacker, u, 4)) for u in ("a1", "a2", "a3")]

        async def three_waiting() -> bool:
            return (await metric(ops, s, "flashsale_ingest_waiters")).get("", 0) == 3

        await eventually(three_waiting)
        status, headers, problem = await get(attacker, "a4", 4)
        assert status == 429 and headers["Content-Type"].startswith(PROBLEM), problem
        assert problem["type"].endswith("/too_many_waits") and int(headers["Retry-After"]) >= 1
        status, _, got = await get(buyer, "b1", 1)  # another client still waits
        assert status == 200 and got["status"] == "pending"
        assert [(await t)[0] for t in polls] == [200, 200, 200]
        status, _, _ = await get(attacker, "a4", 0.5)  # the finished waits were given back
        assert status == 200

        # Per buyer: the verified token's subject, whatever address it comes from.
        def buy(http, user, key, wait_s):
            return http.post(f"{base}/v1/purchases", json={"sku": "s1", "qty": 1},
                             headers={"Idempotency-Key": key, "Prefer": f"wait={wait_s}", **bearer(user)})

        async def bought(http, user, key, wait_s):
            async with buy(http, user, key, wait_s) as r:
                return r.status, await r.json(content_type=None)

        eves = [asyncio.create_task(bought(buyer, "eve", f"k{i}", 3)) for i in range(2)]

        async def two_waiting() -> bool:
            return (await metric(ops, s, "flashsale_ingest_waiters")).get("", 0) == 2

        await eventually(two_waiting)
        before = await intents_count(s)
        status, problem = await bought(other, "eve", "k9", 3)
        assert status == 429 and problem["type"].endswith("/too_many_waits"), problem
        assert await intents_count(s) == before  # refused before anything was published
        status, p = await bought(other, "frank", "k1", 0.5)
        assert status == 202 and p["status"] == "pending"
        assert [(await t)[0] for t in eves] == [202, 202]
        samples = await metric(ops, s, "flashsale_ingest_edge_refusals_total")
    assert refusals(samples, "waits_client") == 1 and refusals(samples, "waits_buyer") == 1


async def test_per_client_rate_and_forwarded_for(system, settings):
    # One token per 10 s after a burst of 3: nothing refills during the test.
    s = msgspec.structs.replace(settings, client_rate_per_s=0.1, client_burst=3, trusted_proxies=PROXY)
    await seed_sku(s, "s1", stock=100)
    system.start_ingest(s)
    base = system.base_url

    async def statuses(http, n, path="/v1/skus/s1", forwarded_for=None):
        out = []
        for i in range(n):
            xff = forwarded_for(i) if callable(forwarded_for) else forwarded_for
            headers = {"X-Forwarded-For": xff} if xff else {}
            async with http.get(base + path, headers=headers) as r:
                out.append(r.status)
                if r.status == 429:
                    problem = await r.json(content_type=None)
                    assert problem["type"].endswith("/rate_limited") and int(r.headers["Retry-After"]) >= 1
        return out

    async with session(ATTACKER) as attacker, session(BUYER) as buyer, session(PROXY) as proxy, \
            session("127.0.0.1") as ops:
        assert await statuses(attacker, 4) == [200, 200, 200, 429]
        assert await statuses(attacker, 2, "/healthz") == [200, 200]  # probes are not limited
        assert await statuses(buyer, 1) == [200]
        # From an untrusted peer X-Forwarded-For is ignored: a fresh one per request does not help.
        assert await statuses(buyer, 3, forwarded_for=lambda i: f"10.0.0.{i}") == [200, 200, 429]
        # From a trusted proxy it names the client: each forwarded client has its own bucket.
        assert await statuses(proxy, 4, forwarded_for="10.0.0.1") == [200, 200, 200, 429]
        assert await statuses(proxy, 1, forwarded_for="10.0.0.2") == [200]
        # The rightmost untrusted hop counts, not what the client wrote to the left of it.
        assert await statuses(proxy, 1, forwarded_for="10.0.0.9, 10.0.0.1") == [429]
        assert await statuses(proxy, 1) == [200]  # the proxy's own requests are its own
        samples = await metric(ops, s, "flashsale_ingest_edge_refusals_total")
    assert refusals(samples, "rate_client") == 4


async def test_the_total_connection_cap_keeps_the_process_below_its_fd_limit(system, settings):
    """More connections than fds, from two addresses neither of which reaches its own cap: the
    process holds at most connections_max (idle ones closed to make room for new ones), stays
    below its fd limit and keeps serving."""
    ingest = start_limited_ingest(system, settings, soft=1024, hard=1024)
    per_address = 550  # 1,100 in all: more than the 1,024 fds
    async with session("127.0.0.1") as ops:
        limits = await metric(ops, settings, "flashsale_ingest_edge_limit")
    connections_max = int(limits['{limit="connections_max"}'])
    assert limits['{limit="client_connections_max"}'] == connections_max < 2 * per_address
    held: list[asyncio.StreamWriter] = []
    reset = 0
    for _ in range(per_address):
        for address in (ATTACKER, OTHER):
            try:
                _, writer = await raw(settings, address)
            except ConnectionResetError:
                reset += 1
                continue
            held.append(writer)
    fds = proc_fds(ingest.proc.pid)
    # Connections whose RST came after the connect call returned are open here but not there.
    async with session("127.0.0.1") as ops:
        status = None
        try:
            async with ops.get(f"{system.base_url}/healthz") as r:
                status = r.status
        except aiohttp.ClientError as exc:
            status = type(exc).__name__
    for writer in held:
        writer.close()

    async def serving_again() -> bool:
        try:
            async with session("127.0.0.1") as ops, ops.get(f"{system.base_url}/healthz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    assert await eventually(serving_again, timeout_s=10)
    async with session("127.0.0.1") as ops:
        samples = await metric(ops, settings, "flashsale_ingest_edge_refusals_total")
    print(f"\n{2 * per_address} connections: connections_max={connections_max}, ingest fds {fds} of "
          f"{proc_fd_limit(ingest.proc.pid)}, reset during connect {reset}, /healthz while full: "
          f"{status}, refusals {samples}")
    assert fds < proc_fd_limit(ingest.proc.pid)
    # Idle connections made room for the ones beyond the cap (and for the /healthz).
    assert refusals(samples, "connection_evicted") >= 2 * per_address - connections_max
    assert status == 200
    assert refusals(samples, "connections_client") == 0


async def test_a_long_poll_whose_client_left_gives_its_slot_back(system, settings):
    s = msgspec.structs.replace(settings, buyer_waits_max=1)
    await seed_sku(s, "s1", stock=100)
    system.start_ingest(s)  # no committers: purchases stay pending
    base = system.base_url
    async with session(BUYER, limit=0) as http, session("127.0.0.1") as ops:
        async with http.post(f"{base}/v1/purchases", json={"sku": "s1", "qty": 1},
                             headers=bearer("leaver")) as r:
            pid = (await r.json())["id"]
        for _ in range(3):  # the buyer's app gives up on a poll and opens another, thrice
            poll = asyncio.create_task(http.get(f"{base}/v1/purchases/{pid}?wait=30",
                                                headers=bearer("leaver")).__aenter__())

            async def waiting() -> bool:
                return (await metric(ops, s, "flashsale_ingest_waiters")).get("", 0) == 1

            await eventually(waiting)
            poll.cancel()  # the client closes the connection

            async def released() -> bool:
                return (await metric(ops, s, "flashsale_ingest_waiters")).get("", 0) == 0

            await eventually(released, timeout_s=5)
