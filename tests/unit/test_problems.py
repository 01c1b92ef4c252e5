"""RFC 9457 problem construction (pure)."""

from __future__ import annotations

import json

import msgspec

from ingest import problems
from ingest.schemas import PurchaseRequest


def test_a_problem_is_problem_json_with_a_type_uri():
    sold_out = problems.Rejection(409, "sold_out", "Sold out", "no stock", headers={"Idempotency-Key": "k"})
    resp = sold_out.response()
    body = json.loads(resp.body)  # type: ignore[arg-type]
    assert resp.status == 409 and resp.content_type == problems.PROBLEM_CONTENT_TYPE
    assert body == {"type": problems.PROBLEM_BASE + "sold_out", "title": "Sold out", "status": 409,
                    "detail": "no stock"}
    assert resp.headers["Idempotency-Key"] == "k"


def test_retry_after_goes_in_the_header_and_the_body():
    resp = problems.overloaded("busy", retry_after_s=2)
    assert resp.status == 503 and resp.headers["Retry-After"] == "2"
    assert json.loads(resp.body)["retry_after_s"] == 2  # type: ignore[arg-type]


def test_a_rejection_answers_as_its_problem():
    rejection = problems.validation("bad qty", [problems.FieldError("$.qty", "Expected `int`")])
    resp = rejection.response()
    body = json.loads(resp.body)  # type: ignore[arg-type]
    assert rejection.slug == "validation" and resp.status == 422
    assert body["errors"] == [{"path": "$.qty", "message": "Expected `int`"}]


def test_msgspec_errors_are_split_into_path_and_message():
    try:
        msgspec.json.decode(b'{"sku": "a", "qty": "x", "user_id": "u"}', type=PurchaseRequest)
    except msgspec.ValidationError as exc:
        err = problems.from_msgspec_error(exc)
    assert err.path == "$.qty" and err.message == "Expected `int`, got `str`"
    assert problems.from_msgspec_error(msgspec.ValidationError("whole body")).path == "$"
