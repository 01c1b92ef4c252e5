"""Structured logs: one JSON object per line, with the fields a call site passes as
`extra=kv(...)`."""

from __future__ import annotations

import json
import logging
import sys
import time

import msgspec

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_encode = msgspec.json.Encoder().encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        try:
            return _encode(out).decode()
        except (UnicodeEncodeError, TypeError):
            # A lone surrogate (aiohttp decodes a client's undecodable bytes with surrogateescape)
            # or a value msgspec cannot encode: escaped or repr'd, but the line is still written.
            return json.dumps(out, ensure_ascii=True, default=repr)


def setup(process: str, level: str = "INFO") -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return logging.getLogger(process)


def kv(**fields: object) -> dict[str, object]:
    """`log.info("msg", extra=kv(shard=1))`: the fields become keys of the JSON line."""
    return fields
