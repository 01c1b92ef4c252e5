"""The identifiers' grammar (proto.identifiers): what each admits, that Python reads the
patterns as JSON Schema does, and that the OpenAPI document states the same grammar."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.schemas import PurchaseRequest
from proto.identifiers import IDEMPOTENCY_KEY, PAYMENT_TOKEN, PURCHASE_ID, SKU, USER_ID, Identifier

# Everything Postgres refuses in text, or that splits a subject, a header or a log line.
HOSTILE = ["\x00", "\n", "\r", "\t", " ", "\x7f", "é", "\u2028", "\ud800"]


@pytest.mark.parametrize(("ident", "good", "bad"), [
    (SKU, ["a", "sneaker-42", "A.b:c_d-9", "x" * 64], ["", "-a", ".a", "a/b", "a b", "x" * 65, "a%00b"]),
    (PURCHASE_ID, ["p_" + "0" * 30, "p_" + "af" * 15], ["p_" + "0" * 29, "p_" + "A" * 30, "q_" + "0" * 30]),
    (IDEMPOTENCY_KEY, ["click-1", "!", "~" * 255], ["", "a b", "k" * 256]),
    (USER_ID, ["alice", "a@b.example", "x" * 128], ["", "alice smith", "x" * 129]),
    (PAYMENT_TOKEN, ["tok_visa", "x" * 255], ["", "tok visa", "x" * 256]),
])
def test_each_identifier_admits_its_grammar(ident: Identifier, good: list[str], bad: list[str]):
    assert all(ident.matches(v) for v in good), ident.name
    assert not any(ident.matches(v) for v in bad), ident.name
    for hostile in HOSTILE:
        assert not ident.matches(hostile), (ident.name, hostile)
        sample = good[0][:-1] or "a"
        assert not ident.matches(sample + hostile) and not ident.matches(sample + hostile + "a"), (
            ident.name, hostile)


@given(st.text(max_size=70))
def test_matches_is_the_json_schema_reading_of_the_pattern(text: str):
    """`$` ends the string in JSON Schema; in Python it also matches before a final newline."""
    for ident in (SKU, PURCHASE_ID, IDEMPOTENCY_KEY, USER_ID, PAYMENT_TOKEN):
        ecma = re.fullmatch(ident.pattern[1:-1], text) is not None  # $ = end of input
        expected = ecma and ident.len_min <= len(text) <= ident.len_max
        assert ident.matches(text) is expected


def test_a_trailing_newline_is_refused_in_bodies_too():
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"sku": "sneaker-42\\n", "qty": 1}', type=PurchaseRequest)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"sku": "a", "qty": 1, "payment_token": "tok\\n"}', type=PurchaseRequest)
    assert msgspec.json.decode(b'{"sku": "sneaker-42", "qty": 1}', type=PurchaseRequest).sku == "sneaker-42"


def _openapi() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(resources.files("ingest").joinpath("openapi.json").read_bytes())
    return doc


def test_the_openapi_document_states_the_same_grammar():
    doc = _openapi()
    by_param = {"sku": SKU, "id": PURCHASE_ID, "Idempotency-Key": IDEMPOTENCY_KEY}
    seen: set[str] = set()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for param in op.get("parameters", []):
                ident = by_param.get(param["name"])
                if ident is None:
                    continue
                schema = param["schema"]
                assert schema["pattern"] == ident.pattern, (method, path, param["name"])
                assert schema.get("maxLength", ident.len_max) == ident.len_max, (method, path)
                seen.add(param["name"])
    assert seen == set(by_param)
    schemas = doc["components"]["schemas"]
    request = schemas["PurchaseRequest"]["properties"]
    for field, ident in (("sku", SKU), ("user_id", USER_ID), ("payment_token", PAYMENT_TOKEN)):
        assert request[field]["pattern"] == ident.pattern, field
        assert request[field]["maxLength"] == ident.len_max, field
        assert request[field].get("minLength", 1) == ident.len_min, field
    token_user = schemas["DevTokenRequest"]["properties"]["user"]
    assert token_user["pattern"] == USER_ID.pattern and token_user["maxLength"] == USER_ID.len_max
