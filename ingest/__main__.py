"""`python -m ingest`: the HTTP tier, configured from the environment (config.settings.load)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

import uvloop
from aiohttp import web

from config.settings import load
from ingest.app import create_app

# LogRecord attributes that are not `extra=` fields.
_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, so log shippers need no parsing rules."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def main() -> None:
    settings = load()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    # Per-request access logs at INFO would cost more than the request itself at peak.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("ingest").info(
        "ingest starting", extra={"host": settings.ingest_host, "port": settings.ingest_port}
    )
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(
        create_app(settings), loop=loop, host=settings.ingest_host, port=settings.ingest_port,
        access_log=None, print=None, shutdown_timeout=5.0,
    )


if __name__ == "__main__":
    main()
