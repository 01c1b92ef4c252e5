"""Ingest's pure helpers: Prefer parsing, time formatting, key validation."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from ingest.http import parse_wait, prefer_wait, valid_idempotency_key
from ingest.schemas import iso_ms


def prefer(value: str) -> float | None:
    return prefer_wait(make_mocked_request("POST", "/v1/purchases", headers={"Prefer": value}))


def test_prefer_wait_forms():
    assert prefer("wait=5") == 5
    assert prefer("respond-async, wait=2.5") == 2.5
    assert prefer('wait="3"') == 3
    assert prefer("handling=lenient; wait=1") == 1
    assert prefer("return=minimal") is None
    assert prefer("wait=soon") is None
    assert prefer("wait=-1") is None
    assert prefer("wait=inf") is None
    assert prefer_wait(make_mocked_request("POST", "/")) is None


def test_parse_wait_rejects_nan():
    assert parse_wait("nan") is None and parse_wait("0") == 0


@given(st.integers(min_value=0, max_value=4_102_444_800_000))
def test_iso_ms_matches_datetime(epoch_ms):
    expected = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert iso_ms(epoch_ms) == f"{expected}.{epoch_ms % 1000:03d}Z"


def test_iso_ms_none():
    assert iso_ms(None) is None


def test_idempotency_key_validation():
    assert valid_idempotency_key("click-1")
    assert not valid_idempotency_key("")
    assert not valid_idempotency_key("a b")
    assert not valid_idempotency_key("k" * 256)
