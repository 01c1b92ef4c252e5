"""A client of the fake PSP's admin API, for tests and the bench. Answers are decoded into
types: the fake's rates, its counters, and payment intents as the gateway reads them."""

from __future__ import annotations

import json
import urllib.request
from typing import TypeVar

import msgspec

from gateway.fakepsp.app import Rates
from gateway.psp import IntentList, PaymentIntent

T = TypeVar("T")


class FakePspAdmin:
    """Synchronous admin client (tests call it between async steps; it never blocks long)."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key

    def _call(self, method: str, path: str, answer: type[T], body: dict[str, float] | None = None) -> T:
        req = urllib.request.Request(
            self.base_url + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return msgspec.json.decode(resp.read(), type=answer)

    def set_rates(self, **rates: float) -> Rates:
        return self._call("POST", "/admin/config", Rates, rates)

    def stats(self) -> dict[str, int]:
        """Counters by name (only those that happened), plus `intents` and `refunds_total`."""
        return self._call("GET", "/admin/stats", dict[str, int])

    def forget(self, intent_id: str) -> PaymentIntent:
        return self._call("DELETE", f"/admin/payment_intents/{intent_id}", PaymentIntent)

    def ledger(self) -> list[PaymentIntent]:
        """Every intent, newest first."""
        out: list[PaymentIntent] = []
        after = ""
        while True:
            page = self._call("GET", f"/v1/payment_intents?limit=100{after}", IntentList)
            out.extend(page.data)
            if not page.has_more:
                return out
            after = f"&starting_after={page.data[-1].id}"
