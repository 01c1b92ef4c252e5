"""The operator's command line, run as a real process against real NATS and Postgres."""

from __future__ import annotations

import os
import subprocess
import sys

import msgspec

from config.settings import to_env


def flashsale(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **to_env(settings)}
    return subprocess.run([sys.executable, "-m", "flashsale", *args], env=env,
                          capture_output=True, text=True, timeout=60)


async def test_set_sku_and_load_sale_go_through_the_writer(system, settings, db, tmp_path):
    system.start(ingest=False)
    out = flashsale(settings, "set-sku", "hot", "--stock", "5", "--price-cents", "250",
                    "--max-per-user", "1", "--payment", "required", "--sale-end", "2999-01-01T00:00:00Z")
    assert out.returncode == 0, out.stderr
    row = await db.fetchrow("SELECT * FROM skus WHERE sku = 'hot'")
    assert (row["stock"], row["price_cents"], row["max_per_user"], row["payment"]) == (5, 250, 1, "required")
    assert row["sale_end_ms"] == 32472144000000

    sale = tmp_path / "sale.toml"
    sale.write_text('[[sku]]\nsku = "a"\nstock = 3\n\n[[sku]]\nsku = "b"\nstock = 4\nprice_cents = 100\n')
    out = flashsale(settings, "load-sale", str(sale))
    assert out.returncode == 0, out.stderr
    assert dict(await db.fetch("SELECT sku, stock FROM skus WHERE sku IN ('a', 'b')")) == {"a": 3, "b": 4}


def test_a_command_says_nats_is_down_instead_of_waiting_forever(settings):
    down = msgspec.structs.replace(settings, nats_url="nats://flashsale:secret@127.0.0.1:1",
                                   command_connect_timeout_s=1.0)
    out = flashsale(down, "set-sku", "hot", "--stock", "5")
    assert out.returncode == 1
    assert "NATS unreachable at nats://flashsale:***@127.0.0.1:1 for 1 s" in out.stderr
    assert "secret" not in out.stderr and "Traceback" not in out.stderr
