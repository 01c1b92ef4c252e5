"""The sale commands against a fake ingest (a small aiohttp app serving a SKU's draw): a draw
recomputed from the public endpoints is accepted only when seed, commitment, ranks and order all
agree; outcomes are one JSON line each; tokens are signed with the dev secret."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

from config.settings import load
from flashsale.ports import free_port
from launch import sales
from launch.verify_draw import check, verify_draw
from proto.draw import commitment_of, draw_order, new_seed
from proto.messages import Refusal

SEED = new_seed()
IDS = draw_order(SEED, [f"p{i}" for i in range(25)])


def ranked(ids: list[str]) -> list[tuple[int, str]]:
    return [(rank, pid) for rank, pid in enumerate(ids, start=1)]


def test_a_draw_that_agrees_with_its_commitment_has_no_problem():
    assert check(SEED, commitment_of(SEED), len(IDS), ranked(IDS)) == []


@pytest.mark.parametrize("seed, commitment, entries, listed, problem", [
    ("zz", None, 25, ranked(IDS), "not 64 hex digits"),
    (SEED, commitment_of(new_seed()), 25, ranked(IDS), "is not the commitment"),
    (SEED, commitment_of(SEED), 25, [(2, IDS[0]), *ranked(IDS)[1:]], "ranks are not 1..M"),
    (SEED, commitment_of(SEED), 26, ranked(IDS), "25 entries listed, the SKU says 26"),
    (SEED, commitment_of(SEED), 25, ranked([IDS[1], IDS[0], *IDS[2:]]), "not HMAC-SHA256"),
])
def test_a_draw_that_disagrees_says_how(seed, commitment, entries, listed, problem):
    assert any(problem in p for p in check(seed, commitment, entries, listed))


def fake_ingest(draw: dict[str, object], ids: list[str]) -> web.Application:
    """GET /v1/skus/{sku} and its /draw pages, as ingest serves them."""
    async def sku(request: web.Request) -> web.Response:
        if request.match_info["sku"] != "hot":
            return web.json_response({}, status=404)
        return web.json_response({"sku": "hot", "draw": draw})

    async def entries(request: web.Request) -> web.Response:
        after, limit = int(request.query["after"]), int(request.query["limit"])
        page = ranked(ids)[after:after + limit]
        last = page[-1][0] if page and after + limit < len(ids) else None
        return web.json_response({"entries": [{"rank": r, "id": i} for r, i in page], "next_after": last})

    app = web.Application()
    app.router.add_get("/v1/skus/{sku}", sku)
    app.router.add_get("/v1/skus/{sku}/draw", entries)
    return app


@pytest.fixture
def ingest_url() -> Iterator[str]:
    port = free_port()
    draw = {"state": "drawn", "seed": SEED, "commitment": commitment_of(SEED), "entries": len(IDS),
            "decides_at": "2026-01-01T00:00:00Z"}
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(fake_ingest(draw, IDS))
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.run_until_complete(runner.cleanup())
    loop.close()


def verify_args(url: str, sku: str = "hot", id: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(url=url, sku=sku, id=id)


def test_verify_draw_recomputes_the_order_and_finds_the_buyers_rank(ingest_url, capsys):
    assert sales.cmd_verify_draw(verify_args(ingest_url, id=IDS[6])) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK hot: 25 entries in the order of HMAC-SHA256(seed, id); seed {SEED}")
    assert f"{IDS[6]}: number 7 of 25" in out


def test_verify_draw_reads_every_page(ingest_url):
    report = asyncio.run(verify_draw(ingest_url, "hot", IDS[24], page_size=10))  # 3 pages
    assert (report.ok, report.entries, report.rank_of_id) == (True, 25, 25)


def test_verify_draw_fails_for_an_id_not_drawn_or_a_sku_unknown(ingest_url, capsys):
    assert sales.cmd_verify_draw(verify_args(ingest_url, id="someone-else")) == 1
    assert "FAIL purchase someone-else is not among the entries" in capsys.readouterr().out
    assert sales.cmd_verify_draw(verify_args(ingest_url, sku="cold")) == 1
    assert ": 404" in capsys.readouterr().out


def test_verify_draw_against_nothing_says_so_in_one_line(capsys):
    assert sales.cmd_verify_draw(verify_args(f"http://127.0.0.1:{free_port()}")) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("flashsale verify-draw: http://127.0.0.1:")


def test_outcomes_are_one_json_line_each_and_a_refusal_fails(capsys):
    refused = Refusal("sku_upsert", "r1", "would oversell")
    assert sales.print_outcome([]) == 0
    assert sales.print_outcome([refused]) == 1
    assert json.loads(capsys.readouterr().out) == {
        "kind": "sku_upsert", "key": "r1", "reason": "would oversell", "status": None, "request_hash": ""}


def test_a_token_per_user_signed_with_the_dev_secret(capsys):
    settings = load()
    assert settings.jwt_hs256_secrets, "config/dev.toml signs dev tokens"
    assert sales.cmd_token(argparse.Namespace(users=["alice", "bob"], ttl_s=60)) == 0
    tokens = capsys.readouterr().out.splitlines()
    assert len(tokens) == 2 and all(t.count(".") == 2 for t in tokens)


def test_a_user_id_that_cannot_be_is_no_token_and_exit_2(capsys):
    assert sales.cmd_token(argparse.Namespace(users=["alice", "not an id!"], ttl_s=60)) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("flashsale token: a user id is ")
