"""`python -m gateway.fakepsp --port 8090`; rates come from FAKEPSP_* variables (see config.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

import uvloop

from flashsale.problem_json import problem_middleware
from flashsale.serving import serve_app
from gateway.fakepsp.app import FakePspConfig, create_app


async def serve(config: FakePspConfig, host: str, port: int) -> None:
    app = create_app(config)
    app.middlewares.append(problem_middleware)
    served = await serve_app(app, host, port)
    logging.info("listening on %s:%s rates=%s", host, port, config.rates)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await served.cleanup()  # flushes the ledger file


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.fakepsp")
    parser.add_argument("--host", default=os.environ.get("FAKEPSP_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("FAKEPSP_PORT", 8090)))
    parser.add_argument("--ledger", help="JSON file the ledger is kept in across restarts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fakepsp %(levelname)s %(message)s")
    config = FakePspConfig.from_env()
    if args.ledger:
        config.ledger_path = args.ledger
    uvloop.run(serve(config, args.host, args.port))


if __name__ == "__main__":
    main()
