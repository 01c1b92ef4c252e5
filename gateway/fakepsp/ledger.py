"""The fake PSP's ledger: payment intents and refunds, and the JSON snapshot they are kept in."""

from __future__ import annotations

from typing import Any

from gateway.fakepsp.errors import ApiError


class Ledger:
    """Payment intents and refunds, in creation order. Plain dicts shaped like Stripe objects."""

    def __init__(self) -> None:
        self.intents: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []  # creation order; forgotten ids stay as tombstones
        self.position: dict[str, int] = {}  # id -> index in order, for list cursors
        self.refunds: dict[str, dict[str, Any]] = {}
        self.by_purchase: dict[str, list[str]] = {}

    def add_intent(self, pi: dict[str, Any]) -> None:
        self.intents[pi["id"]] = pi
        self.position[pi["id"]] = len(self.order)
        self.order.append(pi["id"])
        purchase_id = pi["metadata"].get("purchase_id")
        if purchase_id:
            self.by_purchase.setdefault(purchase_id, []).append(pi["id"])

    def forget_intent(self, pi_id: str) -> dict[str, Any] | None:
        pi = self.intents.pop(pi_id, None)
        if pi is not None:
            ids = self.by_purchase.get(pi["metadata"].get("purchase_id", ""), [])
            if pi_id in ids:
                ids.remove(pi_id)
        return pi

    def page(self, limit: int, starting_after: str | None) -> tuple[list[dict[str, Any]], bool]:
        """Newest first, like Stripe's list endpoints; O(limit) per page."""
        if starting_after is None:
            i = len(self.order) - 1
        elif starting_after in self.position:
            i = self.position[starting_after] - 1
        else:
            raise ApiError(400, "invalid_request_error", f"unknown starting_after {starting_after}")
        out: list[dict[str, Any]] = []
        while i >= 0 and len(out) < limit:
            pi = self.intents.get(self.order[i])
            if pi is not None:
                out.append(pi)
            i -= 1
        has_more = any(self.order[j] in self.intents for j in range(i, -1, -1)) if i >= 0 else False
        return out, has_more

    def get(self, pi_id: str) -> dict[str, Any]:
        pi = self.intents.get(pi_id)
        if pi is None:
            raise ApiError(404, "invalid_request_error", f"No such payment_intent: '{pi_id}'",
                           code="resource_missing")
        return pi

    def snapshot(self) -> dict[str, Any]:
        return {"intents": list(self.intents.values()), "refunds": list(self.refunds.values())}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Ledger:
        ledger = cls()
        for pi in data.get("intents", []):
            ledger.add_intent(pi)
        for refund in data.get("refunds", []):
            ledger.refunds[refund["id"]] = refund
        return ledger
