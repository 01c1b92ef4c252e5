"""The status port of the processes that serve no other HTTP: /healthz is 200 while the process
runs, /readyz follows `is_ready` at each request (503 when not ready), /metrics is Prometheus
text, and anything else is a problem+json 404."""

from __future__ import annotations

import aiohttp

from flashsale.ports import free_port
from flashsale.status import serve_status


async def test_readyz_follows_is_ready_and_healthz_does_not():
    ready = [False]
    port = free_port()
    served = await serve_status(port, lambda: ready[0])
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200 and await r.json() == {"status": "ok"}
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 503 and await r.json() == {"ready": False}
            ready[0] = True
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200 and await r.json() == {"ready": True}
            async with http.get(f"{base}/metrics") as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
                assert "# TYPE" in await r.text()
            async with http.get(f"{base}/elsewhere") as r:
                assert r.status == 404
                assert r.headers["Content-Type"].startswith("application/problem+json")
    finally:
        await served.cleanup()
