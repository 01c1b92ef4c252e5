"""kill -9 of a gateway and of the SKU's committer in the middle of the payment saga, then
restarts: still no double charge, no lost confirmation, no oversell, and the money squares."""

from __future__ import annotations

import asyncio

import pytest

from launch.processes import spare_port
from tests.hostile import still_deciding
from tests.integration.test_gateway_e2e import (
    SKU,
    Saga,
    assert_reconciled,
    make_saga,
    run_two_waves,
)

pytestmark = pytest.mark.chaos


@pytest.fixture
async def slow_saga(system, settings, db):
    # Slower PSP and fewer slots per gateway so the kills land while payments are in flight.
    saga = await make_saga(system, settings, db, latency_ms=15, gateway_concurrency=8)
    yield saga
    await saga.close()


async def confirmed(saga: Saga) -> int:
    return await saga.db.fetchval(
        "SELECT count(*) FROM purchases WHERE sku = $1 AND status = 'confirmed'", SKU)


async def test_kill_9_gateway_and_committer_mid_saga(system, slow_saga: Saga):
    saga = slow_saga
    saga.start_committers()
    for name in ("gateway-a", "gateway-b"):  # two gateways share the work
        saga.start_gateway(name, spare_port(saga.settings))
    kills: list[str] = []

    async def chaos(saga: Saga) -> None:
        await saga.until(lambda: confirmed_at_least(saga, 40),
                         interval_s=0.02)
        system.processes["gateway-a"].kill9()
        kills.append(f"gateway-a at {await confirmed(saga)} confirmed")
        await asyncio.sleep(0.3)
        # Restarts get fresh ports: the dead process's port may already be some client
        # socket's ephemeral port.
        saga.start_gateway("gateway-a", spare_port(saga.settings))
        await saga.until(lambda: confirmed_at_least(saga, 120), interval_s=0.02)
        committer = f"committer-{saga.shard}"
        system.processes[committer].kill9()
        kills.append(f"{committer} at {await confirmed(saga)} confirmed")
        await asyncio.sleep(0.5)
        system.processes["gateway-b"].kill9()
        kills.append(f"gateway-b at {await confirmed(saga)} confirmed")
        system.start_committer(saga.shard, status_port=spare_port(saga.settings))
        saga.start_gateway("gateway-b", spare_port(saga.settings))

    figures = await run_two_waves(saga, stock=300, buyers=2000, chaos=chaos)
    print("kills:", kills)
    print("figures:", figures)
    assert len(kills) == 3
    await assert_reconciled(saga)
    system.start_ingest(saga.settings)
    await still_deciding(system.base_url, saga.settings)


async def confirmed_at_least(saga: Saga, n: int) -> bool:
    return await confirmed(saga) >= n
