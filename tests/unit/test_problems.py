"""RFC 9457 problem construction (pure)."""

from __future__ import annotations

import json

import msgspec
import pytest

from ingest import problems
from ingest.schemas import PurchaseRequest, SkuUpsertRequest
from proto.identifiers import SKU


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


@pytest.mark.parametrize("body, path", [
    (b'{"sku": "a", "qty": 1, "<MARK> - at `$.qty`": 1}', "$"),
    (b'{"stock": 1, "payment": "<MARK> - at `$.stock`"}', "$.payment"),
])
def test_msgspec_errors_never_carry_what_the_client_sent(body: bytes, path: str):
    """msgspec quotes an unknown key and a value outside an enum; the answer names the field only."""
    struct = PurchaseRequest if b"qty" in body else SkuUpsertRequest
    with pytest.raises(msgspec.ValidationError) as exc:
        msgspec.json.decode(body, type=struct)
    assert "MARK" in str(exc.value)
    err = problems.from_msgspec_error(exc.value)
    assert "MARK" not in err.message and err.path == path


def test_a_pattern_is_named_as_the_openapi_document_states_it():
    with pytest.raises(msgspec.ValidationError) as exc:
        msgspec.json.decode(b'{"sku": "a b", "qty": 1}', type=PurchaseRequest)
    err = problems.from_msgspec_error(exc.value)
    assert err.message == f"Expected `str` matching regex '{SKU.pattern}'"
