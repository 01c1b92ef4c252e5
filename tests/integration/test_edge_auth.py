"""What a hostile client finds at the edge of a real stack: tokens, identifiers, lookups.
Distinct loopback addresses act as distinct clients (127.0.0.2 attacks, 127.0.0.3 buys)."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

import aiohttp
import msgspec

from tests.auth import bearer, pid, token
from tests.conftest import seed_sku
from tests.integration.test_edge_limits import session

ATTACKER, BUYER = "127.0.0.2", "127.0.0.3"
PROBLEM = "application/problem+json"


async def get(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None,
              ) -> tuple[int, dict[str, str], dict]:
    async with http.get(url, headers=headers) as r:
        body = await r.json(content_type=None) if r.content_length else {}
        return r.status, dict(r.headers), body


def _respellings(good: str) -> list[str]:
    """Spellings of `good`'s signature that a lenient base64 decoder reads as the same bytes."""
    head, payload, sig = good.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    low_bits_set = sig[:-1] + alphabet[alphabet.index(sig[-1]) | 3]  # 43 characters: 2 unused bits
    spellings = [sig + "!!", sig + "=", low_bits_set, sig.replace("-", "+").replace("_", "/")]
    return [f"{head}.{payload}.{s}" for s in spellings if s != sig]


async def test_a_signature_has_one_spelling(system, settings):
    """A token whose signature is respelt (junk appended, padding, the other alphabet, unused
    bits set) is refused, though a lenient decoder reads the same signature."""
    system.start_ingest()
    missing = system.base_url + "/v1/purchases/" + pid("alice", "never-bought")
    good = next(t for n in range(50) if "-" in (t := token(f"alice{n}")).split(".")[2]
                or "_" in t.split(".")[2])
    async with session(ATTACKER) as http:
        status, _, _ = await get(http, missing, {"Authorization": f"Bearer {good}"})
        assert status == 404  # the token is good: the purchase is not there
        for tampered in _respellings(good):
            status, headers, problem = await get(http, missing, {"Authorization": f"Bearer {tampered}"})
            assert status == 401, tampered
            assert headers["Content-Type"].startswith(PROBLEM) and "base64url" in problem["detail"]
    async with session(BUYER) as http:
        assert (await get(http, missing, bearer("alice")))[0] == 404


async def test_the_dev_token_helper_answers_loopback_host_names_only(system, settings):
    """DNS rebinding: a page at evil.example, its name rebound to 127.0.0.1, reaches the helper
    from the visitor's own loopback; its Host header is the only trace, and it is refused."""
    s = msgspec.structs.replace(settings, dev_token_endpoint=True, dev_token_hosts=["devbox.test"])
    system.settings = s
    system.start_ingest()
    port = s.ingest_port
    async with session("127.0.0.1") as http:
        for host in (f"evil.example:{port}", f"localhost.evil.example:{port}", "10.1.2.3", ""):
            async with http.post(f"{system.base_url}/dev/token", json={"user": "mallory"},
                                 headers={"Host": host}) as r:
                problem = await r.json(content_type=None)
                assert r.status == 403 and r.content_type == PROBLEM, (host, problem)
                assert "token" not in problem
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"devbox.test:{port}", None):
            headers = {"Host": host} if host is not None else None
            async with http.post(f"{system.base_url}/dev/token", json={"user": "alice"},
                                 headers=headers) as r:
                assert r.status == 200 and (await r.json())["user"] == "alice", host


async def test_names_outside_the_grammar_are_4xx_charged_as_misses(system, settings):
    """A NUL (which Postgres refuses in text), a newline or a space in a SKU, a purchase id or a
    key is answered 4xx problem+json at the edge, charged to the address's miss budget (then
    429), never a 503, and never logged per request; another address is not affected."""
    s = msgspec.structs.replace(settings, client_misses_per_s=0.01, client_misses_burst=20)
    system.settings = s
    await seed_sku(s, "tee", stock=5)
    ingest = system.start_ingest()
    base = system.base_url
    bad = ["/v1/skus/a%00b", "/v1/skus/a%00b/events", "/v1/skus/tee%0A", "/v1/skus/tee%20x",
           "/v1/skus/%C3%A9", "/v1/purchases/p_%00", "/v1/purchases/" + "p_" + "0" * 29 + "%0A",
           "/v1/purchases/p_x/events"]
    answers: list[tuple[int, str]] = []
    async with session(ATTACKER) as http:
        for n in range(30):
            path = bad[n % len(bad)]
            async with http.get(base + path, headers=bearer("mallory")) as r:
                problem = await r.json(content_type=None)
                assert r.content_type == PROBLEM, (path, r.status)
                answers.append((r.status, problem["type"].rsplit("/", 1)[1]))
        headers = {**bearer("mallory"), "Idempotency-Key": "has space"}
        async with http.post(base + "/v1/purchases", json={"sku": "tee", "qty": 1}, headers=headers) as r:
            assert r.status == 429 and r.headers["Retry-After"]  # the budget is spent
        for body in ({"sku": "tee\x00", "qty": 1}, {"sku": "tee\n", "qty": 1}):
            async with http.post(base + "/v1/purchases", json=body, headers=bearer("mallory")) as r:
                assert r.status == 422 and r.content_type == PROBLEM, body
    statuses = [status for status, _ in answers]
    assert statuses[:20] == [404] * 20 and set(statuses[20:]) == {429}, answers
    assert {slug for status, slug in answers if status == 429} == {"too_many_misses"}
    async with session(BUYER) as http:
        headers = {**bearer("alice"), "Idempotency-Key": "bad key"}
        async with http.post(base + "/v1/purchases", json={"sku": "tee", "qty": 1}, headers=headers) as r:
            problem = await r.json(content_type=None)
            assert r.status == 400 and problem["type"].endswith("bad_idempotency_key")
        async with http.get(base + "/v1/skus/tee") as r:
            assert r.status == 200
    log = ingest.log_tail(200)
    assert "dependency error" not in log and "CharacterNotInRepertoire" not in log, log


async def _status(http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str],
                  body: dict | None = None) -> tuple[int, str]:
    async with http.request(method, url, headers=headers, json=body) as r:
        await r.read()
        slug = ""
        if r.content_type == PROBLEM:
            slug = (await r.json(content_type=None))["type"].rsplit("/", 1)[1]
        return r.status, slug


async def _pending_purchase(base: str, user: str, key: str) -> str:
    async with session(BUYER) as http:
        headers = {**bearer(user), "Idempotency-Key": key}
        async with http.post(base + "/v1/purchases", json={"sku": "tee", "qty": 1}, headers=headers) as r:
            assert r.status == 202, await r.text()
            return str((await r.json())["id"])


async def test_admin_guesses_share_one_throttle_on_every_route(system, settings):
    """Wrong admin tokens on the read routes and the admin PUT are charged to one budget per
    address (5, then 1/s): the 6th attempt anywhere is a 429, and then the right token is a 429
    from that address too, so its answers tell nothing. Buyers at that address and the operator
    elsewhere are not affected."""
    await seed_sku(settings, "tee", stock=5)
    system.start_ingest()  # no committers: the purchase stays pending, read from the stream
    base = system.base_url
    mine = await _pending_purchase(base, "alice", "k1")
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    wrong = [{"Authorization": f"Bearer guess-{n}"} for n in range(400)]
    routes = [("GET", f"/v1/purchases/{mine}"), ("GET", f"/v1/purchases/{mine}/events"),
              ("PUT", "/v1/admin/skus/tee")]
    async with session(ATTACKER) as http:
        answers = []
        for n in range(6):
            method, path = routes[n % 3]
            answers.append(await _status(http, method, base + path, wrong[n], {"stock": 1}))
        assert answers[:5] == [(401, "unauthorized"), (401, "unauthorized"), (403, "forbidden"),
                               (401, "unauthorized"), (401, "unauthorized")], answers
        assert answers[5] == (429, "admin_throttled"), answers
        # The right token from the throttled address: the same 429, on every route.
        for method, path in routes:
            assert await _status(http, method, base + path, admin, {"stock": 1}) == (429, "admin_throttled")
        # A burst of guesses: refused at once, none checked.
        started = time.monotonic()
        burst = [await _status(http, "GET", f"{base}/v1/purchases/{mine}", h) for h in wrong[6:306]]
        elapsed_s = time.monotonic() - started
        checked = sum(status == 401 for status, _ in burst)
        assert checked <= 1 + elapsed_s * 1.0, (checked, elapsed_s)  # the refill: one a second
        assert {status for status, _ in burst} <= {401, 429}
        # A buyer at the same address (a shared NAT) still reads her own purchase.
        assert (await _status(http, "GET", f"{base}/v1/purchases/{mine}", bearer("alice")))[0] == 200
    async with session(BUYER) as http:  # the operator, elsewhere
        assert (await _status(http, "GET", f"{base}/v1/purchases/{mine}", admin))[0] == 200
    print(f"300 guesses in {elapsed_s:.2f} s from one address: {checked} checked, "
          f"{300 - checked} refused (429)")


async def test_not_yours_and_missing_cost_the_same_and_are_charged_first(system, settings):
    """Another buyer's purchase reads like a missing one and is charged like one, before the
    lookup: 32 concurrent workers get no more lookups through than the budget."""
    budget = 40
    s = msgspec.structs.replace(settings, client_misses_per_s=0.01, client_misses_burst=budget)
    system.settings = s
    await seed_sku(s, "tee", stock=5)
    system.start_ingest()
    base = system.base_url
    theirs = await _pending_purchase(base, "alice", "k1")
    missing = pid("alice", "never-bought")
    async with session(BUYER) as http:  # paced, one at a time: what each answer costs
        timings: dict[str, list[float]] = {"missing": [], "not yours": []}
        for _ in range(budget // 2):
            for name, target in (("missing", missing), ("not yours", theirs)):
                started = time.perf_counter()
                status, slug = await _status(http, "GET", f"{base}/v1/purchases/{target}", bearer("bob"))
                timings[name].append(time.perf_counter() - started)
                assert (status, slug) == (404, "not_found"), (name, status, slug)
    medians = {name: statistics.median(t) * 1000 for name, t in timings.items()}
    print(f"median ms ({budget // 2} each, paced): " + ", ".join(f"{k} {v:.2f}" for k, v in medians.items()))

    async with session(ATTACKER, limit=0) as http:
        async def worker(n: int) -> list[int]:
            out = []
            for i in range(10):
                target = theirs if (n + i) % 2 else missing
                url = f"{base}/v1/purchases/{target}"
                out.append((await _status(http, "GET", url, bearer("mallory")))[0])
            return out

        statuses = [st for batch in await asyncio.gather(*(worker(n) for n in range(32))) for st in batch]
    looked_up = statuses.count(404)
    assert looked_up <= budget + 1 and statuses.count(429) == len(statuses) - looked_up, statuses
    print(f"32 workers x 10 lookups against a budget of {budget}: {looked_up} looked up, "
          f"{statuses.count(429)} refused")


ATTACKERS = [f"127.0.0.{10 + n}" for n in range(10)]
LOOPS_PER_ADDRESS = 4
# The attack runs in a process of its own: in the test's event loop it would slow the buyer's
# own requests down, and that would be measured as the server's latency.
_ATTACK = """
import asyncio, collections, json, sys
import aiohttp

async def main(base, method, path, headers, addresses, loops):
    stop = asyncio.Event()
    counts = collections.Counter()

    async def attack(address):
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            while not stop.is_set():
                async with http.request(method, base + path, headers=headers) as r:
                    await r.read()
                counts[r.status] += 1

    tasks = [asyncio.ensure_future(attack(a)) for a in addresses for _ in range(loops)]
    print("started", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    stop.set()
    await asyncio.gather(*tasks)
    print(json.dumps(counts), flush=True)

asyncio.run(main(*json.loads(sys.argv[1])))
"""


async def _buyer_ms(base: str, tag: str, n: int) -> list[float]:
    """Milliseconds of `n` purchases (202: stored) by a normal buyer at BUYER, one at a time."""
    out = []
    async with session(BUYER) as http:
        for i in range(n):
            headers = {**bearer(f"buyer-{tag}-{i}"), "Idempotency-Key": f"{tag}-{i}"}
            started = time.perf_counter()
            async with http.post(base + "/v1/purchases", json={"sku": "tee", "qty": 1}, headers=headers) as r:
                await r.read()
                assert r.status == 202, (tag, r.status)
            out.append((time.perf_counter() - started) * 1000)
    return out


async def test_a_buyer_buys_while_credentials_names_and_lookups_are_attacked(system, settings):
    """Each attack of this file, from one address and from ten at once (4 connections each, as
    fast as they are answered), while a normal buyer buys: every purchase is stored, and the
    buyer's median is reported beside its median without an attack."""
    await seed_sku(settings, "tee", stock=1_000_000)
    system.start_ingest()
    base = system.base_url
    theirs = await _pending_purchase(base, "alice", "k1")
    attacks = {
        "admin_guesses": ("GET", f"/v1/purchases/{theirs}", {"Authorization": "Bearer guess"}),
        "another_buyers_purchase": ("GET", f"/v1/purchases/{theirs}", bearer("mallory")),
        "missing_purchases": ("GET", f"/v1/purchases/{pid('mallory', 'x')}", bearer("mallory")),
        "nul_in_a_sku": ("GET", "/v1/skus/a%00b", {}),
    }
    n = 60
    quiet = statistics.median(await _buyer_ms(base, "quiet", n))
    report = [f"buyer median without an attack: {quiet:.2f} ms ({n} purchases)"]
    for name, (method, path, headers) in attacks.items():
        for addresses in ([ATTACKER], ATTACKERS):
            args = json.dumps([base, method, path, headers, addresses, LOOPS_PER_ADDRESS])
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _ATTACK, args, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE)
            assert proc.stdin is not None and proc.stdout is not None
            try:
                assert (await proc.stdout.readline()).strip() == b"started"
                await asyncio.sleep(0.5)  # the attack is under way
                during = statistics.median(await _buyer_ms(base, f"{name}-{len(addresses)}", n))
            finally:
                proc.stdin.close()
                out, _ = await proc.communicate()
            counts = {int(k): v for k, v in json.loads(out).items()}
            assert set(counts) <= {401, 404, 429}, (name, counts)
            report.append(f"{name} from {len(addresses)} address(es): {sum(counts.values())} attack "
                          f"requests {dict(sorted(counts.items()))}, buyer median {during:.2f} ms "
                          f"({during / quiet:.2f}x)")
    print("\n".join(report))
