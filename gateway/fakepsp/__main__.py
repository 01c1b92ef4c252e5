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


DEFAULT_PORT = 8090


def parse(argv: list[str] | None, env: dict[str, str] | None = None) -> tuple[FakePspConfig, str, int]:
    """(config, host, port) from the command line over FAKEPSP_* variables."""
    env = dict(os.environ if env is None else env)
    parser = argparse.ArgumentParser(prog="python -m gateway.fakepsp")
    parser.add_argument("--host", default=env.get("FAKEPSP_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get("FAKEPSP_PORT", DEFAULT_PORT)))
    parser.add_argument("--ledger", help="JSON file the ledger is kept in across restarts")
    args = parser.parse_args(argv)
    config = FakePspConfig.from_env(env)
    if args.ledger:
        config.ledger_path = args.ledger
    return config, args.host, args.port


def main(argv: list[str] | None = None) -> None:
    config, host, port = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fakepsp %(levelname)s %(message)s")
    uvloop.run(serve(config, host, port))


if __name__ == "__main__":
    main()
