"""The gateway process around its worker (gateway/__main__.py) and the metrics it keeps
(gateway/metrics.py): the command line over the settings, and a PSP call counted by outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import __main__ as process
from gateway.metrics import PSP_CALLS
from gateway.psp import PspError, StripeLikePsp


def test_the_metrics_port_comes_from_the_command_line_over_the_environment():
    env = {"FLASHSALE_GATEWAY_METRICS_PORT": "9400"}
    assert process.settings_of([], env).gateway_metrics_port == 9400
    assert process.settings_of(["--metrics-port", "0"], env).gateway_metrics_port == 0


@pytest.fixture
async def failing_psp() -> AsyncIterator[StripeLikePsp]:
    async def busy(request: web.Request) -> web.Response:
        return web.json_response({"error": {"type": "api_error", "message": "busy"}}, status=503)

    app = web.Application()
    app.router.add_get("/v1/payment_intents/{id}", busy)
    server = TestServer(app)
    await server.start_server()
    psp = StripeLikePsp(str(server.make_url("")), "sk_unit", timeout_s=2.0)
    yield psp
    await psp.close()
    await server.close()


async def test_a_psp_call_is_counted_by_its_outcome(failing_psp: StripeLikePsp):
    transient = PSP_CALLS.labels("retrieve", "transient")
    before = transient._value.get()
    with pytest.raises(PspError) as failed:
        await failing_psp.retrieve("pi_1")
    assert failed.value.transient
    assert transient._value.get() == before + 1
