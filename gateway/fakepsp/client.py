"""A client of the fake PSP's admin API, for tests and the bench."""

from __future__ import annotations

import json
import urllib.request
from typing import Any


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
