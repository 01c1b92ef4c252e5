"""The fake PSP keeps the Stripe semantics the gateway's correctness rests on, served in this
process and driven through the real adapter and admin client: a key replays its first answer (a
decline included, so a replay never turns a decline into a charge), another call under the same
key is refused, a lost answer's work is kept under its key, and the ledger with its keys
survives a restart from its file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from gateway.fakepsp.app import create_app
from gateway.fakepsp.client import FakePspAdmin
from gateway.fakepsp.config import FakePspConfig, Rates
from gateway.fakepsp.provider import TOKEN_ALWAYS_OK
from gateway.psp import CardDeclined, PspError, StripeLikePsp

API_KEY = "sk_test_unit"
PID = "p_" + "c" * 30
FLAKY = "tok_flaky"  # any token but the two fixed ones follows the dialled rates
TIMEOUT_S = 5.0


class Psp:
    """The fake served in-process: the adapter, its admin client (blocking: run in a thread)."""

    def __init__(self, server: TestServer) -> None:
        self.url = str(server.make_url("")).rstrip("/")
        self.client = StripeLikePsp(self.url, API_KEY, timeout_s=TIMEOUT_S)
        self._admin = FakePspAdmin(self.url, API_KEY)

    async def rates(self, **rates: float) -> Rates:
        return await asyncio.to_thread(self._admin.set_rates, **rates)

    async def stats(self) -> dict[str, int]:
        return await asyncio.to_thread(self._admin.stats)


async def served(config: FakePspConfig) -> AsyncIterator[Psp]:
    async with TestServer(create_app(config)) as server:
        psp = Psp(server)
        try:
            yield psp
        finally:
            await psp.client.close()


@pytest.fixture
async def psp() -> AsyncIterator[Psp]:
    async for p in served(FakePspConfig(api_key=API_KEY, seed=1)):
        yield p


async def test_a_key_replays_its_first_answer_and_charges_once(psp):
    first = await psp.client.authorize(PID, 500, TOKEN_ALWAYS_OK)
    again = await psp.client.authorize(PID, 500, TOKEN_ALWAYS_OK)
    assert again.id == first.id
    stats = await psp.stats()
    assert stats["intents"] == 1 and stats["idempotent_replays"] == 1


async def test_another_call_under_the_same_key_is_refused(psp):
    await psp.client.authorize(PID, 500, TOKEN_ALWAYS_OK)
    with pytest.raises(PspError) as refused:
        await psp.client.authorize(PID, 700, TOKEN_ALWAYS_OK)
    assert not refused.value.transient and refused.value.http_status == 400


async def test_a_decline_is_replayed_as_a_decline(psp):
    await psp.rates(decline_rate=1.0)
    with pytest.raises(CardDeclined):
        await psp.client.authorize(PID, 500, FLAKY)
    await psp.rates(decline_rate=0.0)
    with pytest.raises(CardDeclined):  # the stored 402, not a new roll
        await psp.client.authorize(PID, 500, FLAKY)
    assert (await psp.stats())["intents"] == 1


async def test_a_lost_answer_s_work_is_kept_under_its_key(psp):
    await psp.rates(lost_rate=1.0)
    with pytest.raises(PspError) as lost:
        await psp.client.authorize(PID, 500, FLAKY)
    assert lost.value.transient
    await psp.rates(lost_rate=0.0)
    found = await psp.client.intents_for(PID)
    replayed = await psp.client.authorize(PID, 500, FLAKY)
    assert [i.id for i in found] == [replayed.id] and replayed.status == "requires_capture"


async def test_a_capture_after_a_void_is_an_unexpected_state(psp):
    intent = await psp.client.authorize(PID, 500, TOKEN_ALWAYS_OK)
    await psp.client.void(PID, intent.id)
    with pytest.raises(PspError) as refused:
        await psp.client.capture(PID, intent.id)
    assert refused.value.code == "payment_intent_unexpected_state"


async def test_a_wrong_api_key_is_refused(psp):
    stranger = StripeLikePsp(psp.url, "sk_test_wrong", timeout_s=TIMEOUT_S)
    try:
        with pytest.raises(PspError) as refused:
            await stranger.retrieve("pi_1")
        assert refused.value.http_status == 401 and not refused.value.transient
    finally:
        await stranger.close()


async def test_the_ledger_and_its_keys_survive_a_restart(tmp_path: Path):
    config = FakePspConfig(api_key=API_KEY, ledger_path=str(tmp_path / "ledger.json"))
    async for psp in served(config):
        intent = await psp.client.authorize(PID, 500, TOKEN_ALWAYS_OK)
        captured = await psp.client.capture(PID, intent.id)
    async for psp in served(config):
        assert (await psp.client.retrieve(intent.id)).amount_received == captured.amount_received
        replayed = await psp.client.capture(PID, intent.id)  # the stored answer, no new capture
        assert replayed.status == "succeeded" and (await psp.stats()).get("captures", 0) == 0


def test_the_config_comes_from_the_environment():
    config = FakePspConfig.from_env({"FAKEPSP_API_KEY": "sk_x", "FAKEPSP_DECLINE_RATE": "0.25",
                                     "FAKEPSP_SEED": "7", "FAKEPSP_IDEMPOTENCY_KEYS_MAX": "10"})
    assert (config.api_key, config.rates.decline_rate, config.seed, config.idempotency_keys_max) == (
        "sk_x", 0.25, 7, 10)
    assert FakePspConfig.from_env({}).ledger_path is None
