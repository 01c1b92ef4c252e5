"""What a hostile client finds at the edge of a real stack: tokens, identifiers, lookups.
Distinct loopback addresses act as distinct clients (127.0.0.2 attacks, 127.0.0.3 buys)."""

from __future__ import annotations

import aiohttp
import msgspec

from tests.auth import bearer, pid, token
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
