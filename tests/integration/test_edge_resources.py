"""The threat model's connection and stream resources (docs/operations.md), each held from one
address and from ten at once by an attacker process (tests/integration/edge_attacks.py) beyond
its per-address cap, while a normal buyer buys from its own address: every purchase is
confirmed, the cap's refusal is seen, and the buyer's median is reported beside its median
without an attack. Caps are configured small, so that a test-sized attack reaches them."""

from __future__ import annotations

import asyncio
import json
import sys

import msgspec

from config.settings import REPO_ROOT
from tests.integration.buyer import Latency, buy_as_buyer
from tests.integration.test_edge_limits import metric, session
from tests.integration.test_ingest_flow import Client

ONE = ["127.0.0.2"]
TEN = [f"127.0.0.{10 + n}" for n in range(10)]
PURCHASES = 40  # the buyer's, per measurement
DEADLINE_S = 2.0  # idle_timeout_s and body_timeout_s here
ATTACK_MIN_S = DEADLINE_S + 1.5

# scenario: (holders per address, the refusal reason that shows its cap held)
SCENARIOS: dict[str, tuple[int, str]] = {
    "connections": (40, "connections_client"),  # client_connections_max = 30
    "slow_heads": (40, "connections_client"),  # closed at idle_timeout_s, then capped
    "slow_bodies": (20, "body_timeout"),
    "big_heads": (2, "head_too_large"),
    "malformed": (2, "bad_request"),
    "rate": (3, "rate_client"),
    "long_polls": (15, "waits_client"),  # client_waits_max = 10
    "purchase_streams": (15, "waits_client"),
    "sku_streams": (15, "waits_client"),
}


async def attacked(settings, scenario: str, addresses: list[str], extra: dict) -> tuple[Latency, dict]:
    per_address = SCENARIOS[scenario][0]
    args = json.dumps([settings.ingest_host, settings.ingest_port, scenario, addresses, per_address, extra])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.edge_attacks", args, cwd=REPO_ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"started"
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(1.0)  # the attack is under way
        during = await buy_as_buyer(f"http://{settings.ingest_host}:{settings.ingest_port}",
                                    settings.admin_token, "hot", PURCHASES,
                                    f"{scenario}-{len(addresses)}")
        # Held past the deadlines (idle_timeout_s, body_timeout_s): they take it back meanwhile.
        await asyncio.sleep(max(0.0, started + ATTACK_MIN_S - loop.time()))
    finally:
        proc.stdin.close()
        out, _ = await proc.communicate()
    return during, json.loads(out.decode().strip().splitlines()[-1])


async def test_a_buyer_buys_while_each_resource_is_held_from_one_address_and_from_ten(system, settings):
    s = msgspec.structs.replace(
        settings, client_connections_max=30, client_waits_max=10, buyer_waits_max=5,
        idle_timeout_s=DEADLINE_S, body_timeout_s=DEADLINE_S, client_rate_per_s=50.0, client_burst=50,
    )
    system.settings = s
    system.start()
    base = system.base_url
    async with session("127.0.0.1") as ops:
        c = Client(ops, base, s.admin_token)
        assert (await c.put_sku("hot", stock=1_000_000, price_cents=0, payment="none"))[0] == 200
        # Reserved purchases stay reserved (no gateway runs): long-polls and streams on them wait.
        assert (await c.put_sku("held", stock=10_000, price_cents=100, payment="required",
                                reservation_ttl_s=3600))[0] == 200
        purchases = []
        for a in range(len(TEN)):
            owned = []
            for b in range(3):
                user = f"holder-{a}-{b}"
                status, _, p = await c.buy("held", user, "k1", payment_token="tok_visa")
                assert status == 200 and p["status"] == "reserved", p
                owned.append((user, p["id"]))
            purchases.append(owned)
    extra = {"purchases": purchases}
    quiet = await buy_as_buyer(base, s.admin_token, "hot", PURCHASES, "quiet")
    assert quiet.all_confirmed, quiet.outcomes
    lines = [f"buyer without an attack: median {quiet.median_ms:.1f} ms, p90 {quiet.p90_ms:.1f} ms "
             f"({PURCHASES} purchases, each to its confirmation)"]
    failures = []
    for scenario, (_, reason) in SCENARIOS.items():
        for addresses in (ONE, TEN):
            async with session("127.0.0.1") as ops:
                before = await metric(ops, s, "flashsale_ingest_edge_refusals_total")
            during, counts = await attacked(s, scenario, addresses, extra)
            async with session("127.0.0.1") as ops:
                after = await metric(ops, s, "flashsale_ingest_edge_refusals_total")
            key = f'{{reason="{reason}"}}'
            refused = after.get(key, 0) - before.get(key, 0)
            lines.append(f"{scenario:>16} from {len(addresses):>2} address(es): buyer median "
                         f"{during.median_ms:6.1f} ms ({during.median_ms / quiet.median_ms:4.2f}x), "
                         f"p90 {during.p90_ms:6.1f} ms; {reason} {refused:g}; attacker saw "
                         f"{dict(sorted(counts.items()))}")
            if not during.all_confirmed:
                failures.append((scenario, len(addresses), during.outcomes))
            if not refused:
                failures.append((scenario, len(addresses), f"no {reason} refusal"))
    print("\n" + "\n".join(lines))
    assert not failures, failures
