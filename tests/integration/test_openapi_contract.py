"""The served OpenAPI document is the truth: schemathesis, every check, a buyer's and the
operator's token, against a live stack. Any disagreement or 5xx fails the test."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import msgspec

from tests.auth import token
from tests.integration.test_ingest_flow import Client

MAX_EXAMPLES = 40
RUN_TIMEOUT_S = 420
EXPECTED_WITH_RULES = '["2xx", "3xx", "401", "403", "404", "409", "422", "429"]'


async def test_schemathesis_finds_no_disagreement(system, settings, tmp_path: Path):
    # One client address runs thousands of requests: per-client budgets would answer 429s that
    # the fuzzer cannot tell from real ones (its invalid-credential probes expect 401, not the
    # admin throttle's 429).
    s = msgspec.structs.replace(settings, user_rate_per_s=0, client_misses_per_s=0,
                                admin_failures_burst=1_000_000)
    system.settings = s
    system.start()
    async with aiohttp.ClientSession() as http:
        c = Client(http, system.base_url, s.admin_token)
        assert (await c.put_sku("sneaker-42", stock=1_000_000, price_cents=100))[0] == 200
        assert (await c.put_sku("console-x", stock=1_000_000, payment="required"))[0] == 200
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        # An event stream sends its current state at once: one event tells whether it conforms.
        "max-stream-events = 1\n\n"
        f'[auth.openapi.buyerToken]\nbearer = "{token("fuzzer")}"\n\n'
        f'[auth.openapi.adminToken]\nbearer = "{s.admin_token}"\n\n'
        # Valid by the schema yet refused by a rule no schema can state: a SKU that does not
        # exist (422 unknown_sku), a sale that ends before it starts (422 validation).
        + "".join(
            f'[[operations]]\ninclude-name = "{name}"\n'
            f'checks.positive_data_acceptance.expected-statuses = {EXPECTED_WITH_RULES}\n\n'
            for name in ("POST /v1/purchases", "PUT /v1/admin/skus/{sku}")
        )
    )
    out = await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "run",
         f"{system.base_url}/openapi.json", "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
         "--seed", "7", "--workers", "1", "--request-timeout", "40"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"},
    )
    print(out.stdout[-6000:])
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
