"""Strict JSON request bodies through a route: 415 for another media type, 400 for malformed
JSON, 422 for an invalid or twice-given key, 408 for a body that does not arrive in time, 413
for one larger than body_max_bytes however it is framed; a response is JSON."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from config.settings import Settings
from ingest import bodies
from ingest.schemas import purchase_request_decoder
from tests.unit.ingest_app import ingest_app

SETTINGS = Settings()
BODY_TIMEOUT_S = 0.2


async def echo(request: web.Request) -> web.Response:
    req = await bodies.decode_body(request, purchase_request_decoder)
    return bodies.json_response({"sku": req.sku, "qty": req.qty}, status=202)


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = ingest_app(SETTINGS, body_timeout_s=BODY_TIMEOUT_S)
    app.router.add_post("/echo", echo)
    async with TestClient(TestServer(app)) as client:
        yield client


async def post(client: TestClient, body: bytes, content_type: str = bodies.JSON) -> tuple[int, str]:
    resp = await client.post("/echo", data=body, headers={"Content-Type": content_type})
    return resp.status, (await resp.json()).get("type", "").rpartition("/")[2]


async def test_a_valid_body_is_decoded_and_answered_as_json(client):
    resp = await client.post("/echo", json={"sku": "sneaker-42", "qty": 1})
    assert resp.status == 202 and resp.content_type == bodies.JSON
    assert await resp.json() == {"sku": "sneaker-42", "qty": 1}


@pytest.mark.parametrize(("body", "content_type", "status", "slug"), [
    (b'{"sku": "sneaker-42", "qty": 1}', "text/plain", 415, "unsupported_media_type"),
    (b'{"sku": ', bodies.JSON, 400, "malformed_json"),
    (b'{"sku": "sneaker-42", "qty": 0}', bodies.JSON, 422, "validation"),
    (b'{"sku": "sneaker-42", "qty": 1, "qty": 2}', bodies.JSON, 422, "validation"),
    (b'{"sku": "sneaker-42", "q\\u0074y": 1, "qty": 2}', bodies.JSON, 422, "validation"),
])
async def test_a_body_that_is_not_strict_json_of_the_type_is_refused(client, body, content_type,
                                                                     status, slug):
    assert await post(client, body, content_type) == (status, slug)


def test_a_key_given_twice_is_found_and_a_value_equal_to_a_key_is_not():
    patterns = (b'"sku"', b'"qty"')
    assert bodies.duplicate_key(b'{"sku": "qty", "qty": 1}', patterns) is None
    assert bodies.duplicate_key(b'{"sku": "a", "sku": "b"}', patterns) == "sku"


async def test_a_body_that_does_not_arrive_in_time_is_a_408(client):
    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"sku": '
        await asyncio.sleep(BODY_TIMEOUT_S * 5)
        yield b'"sneaker-42", "qty": 1}'

    resp = await client.post("/echo", data=trickle(), headers={"Content-Type": bodies.JSON})
    assert resp.status == 408


@pytest.mark.parametrize("pause_s", [0.0, BODY_TIMEOUT_S / 4])
async def test_a_chunked_body_over_the_limit_is_a_413_whether_it_came_whole_or_not(client, pause_s):
    """No Content-Length to refuse it by: the body is measured as it is read, from the buffer
    when it came whole with the head, or as it arrives."""
    padding = b" " * SETTINGS.body_max_bytes

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"sku": "sneaker-42",'
        if pause_s:
            await asyncio.sleep(pause_s)
        yield padding + b'"qty": 1}'

    resp = await client.post("/echo", data=chunks(), headers={"Content-Type": bodies.JSON})
    assert resp.status == 413
    assert (await resp.json())["type"].endswith("/body_too_large")


async def test_a_chunked_body_within_the_limit_is_read_whole(client):
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"sku": "sneaker-42",'
        yield b' "qty": 3}'

    resp = await client.post("/echo", data=chunks(), headers={"Content-Type": bodies.JSON})
    assert resp.status == 202 and await resp.json() == {"sku": "sneaker-42", "qty": 3}
