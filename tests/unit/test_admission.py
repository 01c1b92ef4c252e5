"""Admission, in front of handlers that raise what real ones raise: a declared body over the
limit is a 413 before the handler runs, a publishing route is shed (503 + Retry-After) when
publishing cannot keep up and no other route is, and every error a handler raises becomes
problem+json: a Rejection as itself, a dependency failure as a 503, anything else as a 500,
never a traceback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import nats.errors
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ingest import admission, failures, metrics, problems
from ingest.errors import Overloaded

BODY_MAX_BYTES = 64
RETRY_AFTER_S = 2
PROBLEM = "application/problem+json"


class Capacity:
    """check_capacity: raises Overloaded(cause) while `cause` is set; counts its calls."""

    def __init__(self) -> None:
        self.cause: str | None = None
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.cause is not None:
            raise Overloaded(self.cause)


def raising(exc: BaseException):
    async def handler(_: web.Request) -> web.Response:
        raise exc

    return handler


async def ok(_: web.Request) -> web.Response:
    return web.json_response({"ok": True}, status=202)


@pytest.fixture
def capacity() -> Capacity:
    return Capacity()


@pytest.fixture
async def client(capacity: Capacity) -> AsyncIterator[TestClient]:
    app = web.Application(middlewares=[admission.middleware(capacity, BODY_MAX_BYTES, RETRY_AFTER_S)])
    app.router.add_post("/v1/purchases", ok)
    app.router.add_get("/v1/skus/{sku}", ok)
    app.router.add_get("/rejected", raising(problems.not_found("no such thing")))
    app.router.add_get("/nats-down", raising(nats.errors.NoServersError()))
    app.router.add_get("/pg-down", raising(asyncpg.PostgresConnectionError("gone")))
    app.router.add_get("/timeout", raising(TimeoutError()))
    app.router.add_get("/bug", raising(ZeroDivisionError("a bug")))
    async with TestClient(TestServer(app)) as c:
        yield c


async def problem_of(resp) -> dict:
    assert resp.headers["Content-Type"].startswith(PROBLEM), resp.headers["Content-Type"]
    return await resp.json(content_type=None)


async def test_a_declared_body_over_the_limit_is_a_413_before_the_handler(client, capacity):
    resp = await client.post("/v1/purchases", data=b"x" * (BODY_MAX_BYTES + 1))
    assert resp.status == 413
    assert (await problem_of(resp))["type"].endswith("/body_too_large")
    assert capacity.calls == 0  # refused before anything else is looked at
    resp = await client.post("/v1/purchases", data=b"x" * BODY_MAX_BYTES)
    assert resp.status == 202


async def test_only_publishing_routes_are_shed_with_retry_after(client, capacity):
    capacity.cause = "inflight_max"
    resp = await client.post("/v1/purchases", data=b"{}")
    assert resp.status == 503
    assert resp.headers["Retry-After"] == str(RETRY_AFTER_S)
    assert "inflight_max" in (await problem_of(resp))["detail"]
    resp = await client.get("/v1/skus/a")  # a read publishes nothing: never shed
    assert resp.status == 202
    capacity.cause = None
    assert (await client.post("/v1/purchases", data=b"{}")).status == 202


async def test_a_rejection_is_answered_as_itself(client):
    resp = await client.get("/rejected")
    assert resp.status == 404
    assert (await problem_of(resp))["detail"] == "no such thing"


@pytest.mark.parametrize("path", ["/nats-down", "/pg-down", "/timeout"])
async def test_a_dependency_failure_is_a_503_with_retry_after(client, path):
    resp = await client.get(path)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == str(RETRY_AFTER_S)
    assert (await problem_of(resp))["type"].endswith("/dependency_unavailable")


async def test_an_unexpected_error_is_a_500_problem_without_its_text(client):
    resp = await client.get("/bug")
    assert resp.status == 500
    problem = await problem_of(resp)
    assert problem["type"].endswith("/internal") and "a bug" not in str(problem)


async def test_router_refusals_are_problems_and_405_keeps_allow(client):
    resp = await client.get("/nowhere")
    assert resp.status == 404
    assert (await problem_of(resp))["type"].endswith("/not_found")
    resp = await client.delete("/v1/purchases")
    assert resp.status == 405
    assert "POST" in resp.headers["Allow"]
    assert (await problem_of(resp))["type"].endswith("/method_not_allowed")


def requests_counted(route: str, status: int) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "flashsale_ingest_requests_total", {"route": route, "status": str(status)})
    return value or 0.0


async def test_requests_are_counted_by_route_template_never_by_path(client):
    before = (requests_counted("/v1/skus/{sku}", 202), requests_counted("unmatched", 404))
    await client.get("/v1/skus/a")
    await client.get("/v1/skus/b")
    await client.get("/no/such/path/123")
    after = (requests_counted("/v1/skus/{sku}", 202), requests_counted("unmatched", 404))
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)
    # One label per template: a client choosing paths cannot grow the metrics.
    labels = {s.labels["route"] for m in metrics.REGISTRY.collect() for s in m.samples
              if s.name == "flashsale_ingest_requests_total"}
    assert not any(label.startswith("/no/") or label.endswith("/a") for label in labels)


def test_a_router_405_keeps_its_allow_header_and_an_unknown_status_its_own_slug():
    allowed = failures.problem_response(web.HTTPMethodNotAllowed("PUT", ["GET", "HEAD"]), "PUT",
                                        "/v1/skus/{sku}", RETRY_AFTER_S)
    assert allowed.status == 405 and allowed.headers["Allow"] == "GET,HEAD"
    teapot = failures.problem_response(web.HTTPRequestRangeNotSatisfiable(), "GET", "/", RETRY_AFTER_S)
    assert teapot.status == 416 and teapot.content_type == PROBLEM
    assert b"/problems/http_error" in teapot.body  # type: ignore[operator]

