"""`python -m gateway`: one payment gateway process. Run as many as you like; they share the
durable consumers, so each job and each refused confirm is handled by one of them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import uvloop

from config.settings import Settings, load_or_exit
from flashsale.credentials import postgres_pool
from flashsale.jetstream import connect_nats, ensure_streams
from flashsale.logs import kv
from flashsale.logs import setup as setup_logs
from flashsale.status import serve_status
from gateway import consumers
from gateway.psp import StripeLikePsp
from gateway.worker import PaymentWorker

log = logging.getLogger("gateway")

# PSP connections the worker keeps at least, however few payment slots it runs: refund and
# look-up calls of compensations and reconciliation share the pool with the jobs.
PSP_CONNECTIONS_MIN = 10


async def run(settings: Settings) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    ready = asyncio.Event()
    port = settings.gateway_metrics_port
    runner = await serve_status(port, ready.is_set) if port else None
    nc = await connect_nats(settings, "gateway")
    js = nc.jetstream()
    await ensure_streams(js, settings)
    db = await postgres_pool("gateway", settings.database_url, min_size=1, max_size=4)
    psp = StripeLikePsp(settings.psp_url, settings.psp_api_key, timeout_s=settings.psp_timeout_s,
                        currency=settings.psp_currency,
                        connections_max=max(PSP_CONNECTIONS_MIN, settings.gateway_concurrency))
    worker = PaymentWorker(settings, js, psp, db)
    jobs, refusals = await consumers.subscribe(worker, nc)
    ready.set()
    log.info("gateway ready", extra=kv(psp_url=settings.psp_url, concurrency=settings.gateway_concurrency))
    try:
        await asyncio.gather(consumers.run_jobs(worker, jobs, stop),
                             consumers.run_refusals(worker, refusals, stop))
    finally:
        await psp.close()
        await db.close()
        # Not drain(): it waits on the pull subscriptions' inboxes until its timeout. Every job
        # still unacked here is redelivered, which the worker tolerates by design.
        await nc.close()
        if runner is not None:
            await runner.cleanup()
        log.info("gateway stopped")


def settings_of(argv: list[str] | None, env: dict[str, str] | None = None) -> Settings:
    """The settings (defaults < TOML < environment), with the command line's overrides."""
    parser = argparse.ArgumentParser(prog="python -m gateway")
    parser.add_argument("--metrics-port", type=int, help="overrides gateway_metrics_port")
    args = parser.parse_args(argv)
    overrides = {"gateway_metrics_port": args.metrics_port} if args.metrics_port is not None else {}
    return load_or_exit("gateway", env, **overrides)


def main(argv: list[str] | None = None) -> None:
    settings = settings_of(argv)
    setup_logs("gateway", settings.log_level)
    uvloop.run(run(settings))


if __name__ == "__main__":
    main()
