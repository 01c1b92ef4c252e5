"""The sale page's assets: index.html with this server's facts written in (no placeholder left),
the three files under a policy that lets nothing inline or foreign run, and nothing else served
from /static (index.html only at /)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from config.settings import Settings
from ingest import page

SETTINGS = Settings(dev_token_endpoint=True, qty_max=3, psp_currency="eur")


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = web.Application()
    page.setup(app, SETTINGS)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_index_carries_this_server_s_facts(client):
    resp = await client.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    body = await resp.text()
    assert "{{" not in body
    assert '<meta name="flashsale-dev-tokens" content="true">' in body
    assert '<meta name="flashsale-qty-max" content="3">' in body
    assert '<meta name="flashsale-currency" content="EUR">' in body
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(("name", "content_type"), [("sale.js", "text/javascript"),
                                                     ("sale.css", "text/css")])
async def test_the_page_s_assets_are_served_with_the_same_policy(client, name, content_type):
    resp = await client.get(f"/static/{name}")
    assert resp.status == 200 and resp.content_type == content_type
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert len(await resp.read()) > 0


@pytest.mark.parametrize("name", ["index.html", "../page.py", "secret.txt", "%2e%2e%2fstate.py"])
async def test_nothing_else_is_served_from_static(client, name):
    assert (await client.get(f"/static/{name}")).status == 404
