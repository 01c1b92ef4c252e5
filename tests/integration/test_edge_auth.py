"""What a hostile client finds at the edge of a real stack: tokens, identifiers, lookups.
Distinct loopback addresses act as distinct clients (127.0.0.2 attacks, 127.0.0.3 buys)."""

from __future__ import annotations

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
