"""Ingest's pure helpers: Prefer parsing, time formatting, key validation, Host names."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.devtoken import is_dev_host
from ingest.prefer import parse_wait, prefer_wait
from ingest.schemas import iso_ms


def prefer(value: str) -> float | None:
    return prefer_wait(value)


def test_prefer_wait_forms():
    assert prefer("wait=5") == 5
    assert prefer("respond-async, wait=2.5") == 2.5
    assert prefer('wait="3"') == 3
    assert prefer("handling=lenient; wait=1") == 1
    assert prefer("return=minimal") is None
    assert prefer("wait=soon") is None
    assert prefer("wait=-1") is None
    assert prefer("wait=inf") is None
    assert prefer_wait(None) is None and prefer_wait("") is None


def test_parse_wait_rejects_nan():
    assert parse_wait("nan") is None and parse_wait("0") == 0


@given(st.integers(min_value=0, max_value=4_102_444_800_000))
def test_iso_ms_matches_datetime(epoch_ms):
    expected = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert iso_ms(epoch_ms) == f"{expected}.{epoch_ms % 1000:03d}Z"


def test_iso_ms_none():
    assert iso_ms(None) is None


@pytest.mark.parametrize(("host", "ok"), [
    ("localhost", True), ("LOCALHOST:8080", True), ("localhost.:8080", True), ("127.0.0.1:8080", True),
    ("127.9.8.7", True), ("[::1]:8080", True), ("[::1]", True), ("devbox.test:80", True),
    (None, False), ("", False), ("evil.example:8080", False), ("localhost.evil.example", False),
    ("127.0.0.1.evil.example", False), ("10.0.0.1:8080", False), ("[::2]:8080", False),
    ("0.0.0.0:8080", False), ("evil.example:localhost", False),
])
def test_the_dev_token_helper_knows_its_hosts(host: str | None, ok: bool):
    assert is_dev_host(host, ["DevBox.test"]) is ok
