"""The operator's command line, run as a real process against real NATS and Postgres."""

from __future__ import annotations

import os
import subprocess
import sys

import aiohttp
import msgspec

from config.settings import to_env
from ingest.schemas import iso_ms
from proto.clock import now_ms
from tests.integration.test_draw import Drop, enter, until, wait_decided


def flashsale(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **to_env(settings)}
    return subprocess.run([sys.executable, "-m", "launch", *args], env=env,
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


async def test_bad_sku_changes_are_one_line_and_exit_2_with_nothing_sent(system, settings, db,
                                                                        tmp_path):
    """Values no column holds, a sale file that is not one: a line each, exit 2, nothing reaches
    a writer (which would otherwise fail its batch on every redelivery), and the shard goes on."""
    system.start()
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text("[[sku]\n")
    runs = [("set-sku", "x", "--stock", "10", "--max-per-user", "0"),
            ("set-sku", "x", "--stock", "9223372036854775808"),
            ("set-sku", "x", "--stock", "10", "--price-cents", "99999999999999999999"),
            ("set-sku", "x", "--stock", "10", "--reservation-ttl-s", "0"),
            ("load-sale", str(bad_file)), ("load-sale", str(tmp_path / "missing.toml"))]
    for args in runs:
        out = flashsale(settings, *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, args
    assert await db.fetchval("SELECT count(*) FROM skus") == 0
    ok = flashsale(settings, "set-sku", "x", "--stock", "10", "--max-per-user", "1")
    assert ok.returncode == 0, ok.stderr


def test_arguments_that_cannot_work_are_one_line_and_exit_2(settings):
    """A purge every 0 s would spin, every -1 s die after its first purge; a token for a user id
    ingest refuses would be refused at every call: each is said before anything is done."""
    for args in [("purge-intents", "--every", "0"), ("purge-intents", "--every", "-1"),
                 ("purge-intents", "--every", "nan"), ("token", ""), ("token", "a b"),
                 ("set-sku", "x", "--stock", "1", "--timeout-s", "0"),
                 ("load-sale", "config/sales/demo.toml", "--timeout-s", "-1"),
                 ("token", "alice", "--ttl-s", "0")]:
        out = flashsale(settings, *args)
        assert out.returncode == 2 and out.stdout == "", (args, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr and out.stderr.strip().splitlines()[-1], args


def test_a_command_says_nats_is_down_instead_of_waiting_forever(settings):
    down = msgspec.structs.replace(settings, nats_url="nats://flashsale:secret@127.0.0.1:1",
                                   command_connect_timeout_s=1.0)
    out = flashsale(down, "set-sku", "hot", "--stock", "5")
    assert out.returncode == 1
    assert "NATS unreachable at nats://flashsale:***@127.0.0.1:1 for 1 s" in out.stderr
    assert "secret" not in out.stderr and "Traceback" not in out.stderr


async def test_a_drop_from_the_cli_and_its_verification(system, settings, db, tmp_path):
    """set-sku and a sale file set a draw window; verify-draw checks the drawn order from the
    public endpoints (and says so when there is nothing to verify yet)."""
    system.start()
    start_ms = now_ms() + 8000  # after two commands have started and applied their change
    out = flashsale(settings, "set-sku", "cli-drop", "--stock", "2", "--max-per-user", "1",
                    "--sale-start", iso_ms(start_ms) or "", "--draw-window-s", "1")
    assert out.returncode == 0, out.stderr
    sale = tmp_path / "sale.toml"
    sale.write_text(f'[[sku]]\nsku = "file-drop"\nstock = 1\nsale_start = "{iso_ms(start_ms)}"\n'
                    "draw_window_s = 3\n")
    assert flashsale(settings, "load-sale", str(sale)).returncode == 0
    rows = dict(await db.fetch("SELECT sku, draw_window_s FROM skus WHERE draw_seed IS NOT NULL"))
    assert rows == {"cli-drop": 1, "file-drop": 3}
    early = flashsale(settings, "verify-draw", "cli-drop", "--url", system.base_url)
    assert early.returncode == 1 and "not drawn yet" in early.stdout
    drop = Drop("cli-drop", start_ms, 1, {})
    await until(start_ms + 20)
    async with aiohttp.ClientSession() as http:
        await enter(http, system.base_url, drop, [f"cli-{i}" for i in range(5)])
    await wait_decided(db, set(drop.accepted))
    pid = next(iter(drop.accepted))
    out = flashsale(settings, "verify-draw", "cli-drop", "--url", system.base_url, "--id", pid)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("OK cli-drop: 5 entries") and f"{pid}: number " in out.stdout
