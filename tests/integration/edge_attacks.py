"""The attacker of test_edge_resources, run as a process of its own (in the test's event loop it
would slow the buyer's own requests, and that would be measured as the server's): it holds one
kind of resource of an ingest process from each of its addresses, re-taking what the server
takes back, until its stdin closes; then it prints what it saw.

    python -m tests.integration.edge_attacks '<json: host, port, scenario, addresses, per_address, extra>'

It prints `started` once every holder has made its first attempt, and a JSON object of outcome
counts (a status code, "reset", "closed") at the end."""

from __future__ import annotations

import asyncio
import collections
import json
import sys
from collections.abc import Awaitable

import aiohttp

from tests.auth import token

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: ingest\r\n\r\n"
TRICKLE_INTERVAL_S = 0.5
RETRY_S = 0.2  # a holder reconnects after this
RESET_RETRY_S = 0.05  # a flooder whose connection was refused asks again after this


class Attack:
    def __init__(self, host: str, port: int, extra: dict) -> None:
        self.host = host
        self.port = port
        self.base = f"http://{host}:{port}"
        self.extra = extra
        self.stop = asyncio.Event()
        self.counts: collections.Counter[str] = collections.Counter()
        self.first_attempts = 0
        self.holders = 0  # set once every holder is made
        self.started = asyncio.Event()  # every holder has made its first attempt

    def attempted(self) -> None:
        self.first_attempts += 1
        if self.first_attempts >= self.holders:
            self.started.set()

    # -- raw connections: held as long as the server lets them -----------------------------

    async def hold_raw(self, address: str, opening: bytes, trickle: bytes = b"") -> None:
        first = True
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port,
                                                               local_addr=(address, 0))
            except OSError:
                self.counts["reset"] += 1
                if first:
                    first = False
                    self.attempted()
                await asyncio.sleep(RETRY_S)
                continue
            try:
                writer.write(opening)
                if first:
                    first = False
                    self.attempted()
                self.counts[await self._until_closed(reader, writer, trickle)] += 1
            finally:
                writer.close()
            await asyncio.sleep(RETRY_S)

    async def _until_closed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            trickle: bytes) -> str:
        """Read (and trickle `trickle`, a byte every TRICKLE_INTERVAL_S) until the server closes:
        the last status it answered, "closed" without one, or "reset"."""
        status = "closed"
        at = 0
        try:
            while not self.stop.is_set():
                try:
                    async with asyncio.timeout(TRICKLE_INTERVAL_S):
                        data = await reader.read(65536)
                except TimeoutError:
                    if trickle:
                        writer.write(trickle[at % len(trickle): at % len(trickle) + 1])
                        at += 1
                    continue
                if not data:
                    return status
                if data.startswith(b"HTTP/1."):
                    status = data[9:12].decode()
        except (ConnectionError, OSError):
            return "reset"
        return status

    # -- HTTP loops ------------------------------------------------------------------------

    async def loop_http(self, address: str, method: str, path: str, headers: dict[str, str],
                        read_body: bool = True) -> None:
        connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=0)
        first = True
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=None)) as http:
            while not self.stop.is_set():
                try:
                    async with http.request(method, self.base + path, headers=headers) as r:
                        if first:
                            first = False
                            self.attempted()
                        self.counts[str(r.status)] += 1
                        if read_body:
                            while not self.stop.is_set() and await r.content.readany():
                                pass
                except (aiohttp.ClientError, OSError):
                    self.counts["reset"] += 1
                    if first:
                        first = False
                        self.attempted()
                    await asyncio.sleep(RESET_RETRY_S)


def holders(attack: Attack, scenario: str, address: str, n: int, a: int) -> list[Awaitable[None]]:
    """The coroutines holding `scenario` from `address` (its index: `a`)."""
    extra = attack.extra
    if scenario == "connections":  # kept-alive, idle after one request
        return [attack.hold_raw(address, HEALTHZ) for _ in range(n)]
    if scenario == "slow_heads":
        return [attack.hold_raw(address, b"GET /healthz HTTP/1.1\r\nHost: ingest\r\n", b"X-Slow: a\r\n")
                for _ in range(n)]
    if scenario == "slow_bodies":
        head = (b"POST /v1/purchases HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + token(f"slow-{address}").encode()
                + b"\r\nContent-Length: 1000\r\n\r\n{")
        return [attack.hold_raw(address, head, b" ") for _ in range(n)]
    if scenario == "big_heads":  # a kept-alive connection's second head over the limit
        big = b"GET /healthz HTTP/1.1\r\nHost: ingest\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"
        return [attack.hold_raw(address, HEALTHZ + big) for _ in range(n)]
    if scenario == "malformed":
        bad = (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        return [attack.hold_raw(address, bad) for _ in range(n)]
    if scenario == "rate":
        return [attack.loop_http(address, "GET", "/v1/skus/hot", {}) for _ in range(n)]
    if scenario == "sku_streams":
        return [attack.loop_http(address, "GET", "/v1/skus/hot/events", {}) for _ in range(n)]
    if scenario in ("long_polls", "purchase_streams"):
        # Each address has buyers of its own, each with a purchase that stays reserved.
        owned = extra["purchases"][a]
        out = []
        for i in range(n):
            user, pid = owned[i % len(owned)]
            headers = {"Authorization": f"Bearer {token(user)}"}
            path = (f"/v1/purchases/{pid}?wait=20&seen=reserved" if scenario == "long_polls"
                    else f"/v1/purchases/{pid}/events")
            out.append(attack.loop_http(address, "GET", path, headers))
        return out
    raise ValueError(f"no scenario {scenario!r}")


async def main(host: str, port: int, scenario: str, addresses: list[str], per_address: int,
               extra: dict) -> None:
    attack = Attack(host, port, extra)
    tasks = [asyncio.ensure_future(c) for a, address in enumerate(addresses)
             for c in holders(attack, scenario, address, per_address, a)]
    attack.holders = len(tasks)
    await attack.started.wait()
    print("started", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    attack.stop.set()
    await asyncio.wait(tasks, timeout=5)
    for t in tasks:
        t.cancel()
    print(json.dumps(attack.counts), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*json.loads(sys.argv[1])))
