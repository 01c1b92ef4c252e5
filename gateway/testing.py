"""Helpers for tests and the bench: start the fake PSP and the gateway as real processes, and
drive the fake PSP's admin API."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from config.settings import Settings
from flashsale import procs
from flashsale.embedded import free_port


def spare_port(settings: Settings) -> int:
    """A free port that is not one the committers will bind later (metrics base + shard)."""
    taken = range(settings.committer_metrics_port,
                  settings.committer_metrics_port + settings.shards + 1)
    while (port := free_port()) in taken:
        pass
    return port


def fakepsp_process(settings: Settings, log_dir: Path, *, port: int | None = None,
                    name: str = "fakepsp", **rates: float) -> tuple[procs.Process, str]:
    """A fake PSP process (not started) and its base URL. `rates`: latency_ms, decline_rate,
    timeout_rate, lost_rate, hang_s."""
    port = port or spare_port(settings)
    env = {f"FAKEPSP_{k.upper()}": str(v) for k, v in rates.items()}
    env["FAKEPSP_API_KEY"] = settings.psp_api_key
    p = procs.python_module(name, "gateway.fakepsp", ["--port", str(port)], settings, log_dir, env)
    return p, f"http://127.0.0.1:{port}"


def gateway_process(settings: Settings, log_dir: Path, name: str = "gateway",
                    metrics_port: int | None = None) -> procs.Process:
    args = [] if metrics_port is None else ["--metrics-port", str(metrics_port)]
    return procs.python_module(name, "gateway", args, settings, log_dir)


def gateway_ready_url(settings: Settings, metrics_port: int | None = None) -> str:
    return f"http://127.0.0.1:{metrics_port or settings.gateway_metrics_port}/readyz"


class FakePspAdmin:
    """Synchronous admin client (tests call it between async steps; it never blocks long)."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(
            self.base_url + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def set_rates(self, **rates: float) -> dict[str, Any]:
        return self._call("POST", "/admin/config", rates)

    def stats(self) -> dict[str, int]:
        return self._call("GET", "/admin/stats")

    def forget(self, intent_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/admin/payment_intents/{intent_id}")

    def ledger(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = ""
        while True:
            page = self._call("GET", f"/v1/payment_intents?limit=100{after}")
            out.extend(page["data"])
            if not page["has_more"]:
                return out
            after = f"&starting_after={page['data'][-1]['id']}"
