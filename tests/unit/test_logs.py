"""Log lines: one JSON object each, with the time in UTC to the millisecond, the level, the
logger, the message, every field passed as `extra=kv(...)` and the traceback of an exception."""

from __future__ import annotations

import json
import logging
import re
import sys

from flashsale.logs import JsonFormatter, kv


def record(msg: str, *args: object, extra: dict[str, object] | None = None,
           exc_info: object = None) -> logging.LogRecord:
    rec = logging.getLogger("test.logs").makeRecord(
        "test.logs", logging.WARNING, __file__, 1, msg, args, exc_info, extra=extra)  # type: ignore[arg-type]
    return rec


def test_a_line_is_one_json_object_with_the_fields_passed():
    line = JsonFormatter().format(record("stored %d", 3, extra=kv(shard=1, ids=["a", "b"])))
    assert "\n" not in line
    out = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out.pop("ts"))
    assert out == {"level": "warning", "logger": "test.logs", "msg": "stored 3", "shard": 1,
                   "ids": ["a", "b"]}


def test_an_exception_is_one_field_of_the_same_line():
    try:
        raise ValueError("boom")
    except ValueError:
        line = JsonFormatter().format(record("failed", exc_info=sys.exc_info()))
    out = json.loads(line)
    assert out["msg"] == "failed" and "ValueError: boom" in out["exc"]


def test_a_client_s_undecodable_bytes_are_escaped_not_lost():
    # aiohttp decodes a header's invalid UTF-8 with surrogateescape: a lone surrogate.
    raw = b"\xff".decode("utf-8", "surrogateescape")
    line = JsonFormatter().format(record("bad header", extra=kv(value=raw)))
    assert line.isascii() and json.loads(line)["value"] == raw


def test_a_value_msgspec_cannot_encode_is_written_as_its_repr():
    line = JsonFormatter().format(record("odd", extra=kv(thing=object())))
    assert json.loads(line)["thing"].startswith("<object object")
