"""Stripe-shaped errors: `{"error": {"type", "message", ...}}` with an HTTP status."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class ApiError(Exception):
    def __init__(self, status: int, type_: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type_, "message": message, **extra}}


def error_response(status: int, type_: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"type": type_, "message": message, **extra}}, status=status)


QUOTED_VALUE_MAX_CHARS = 50  # of a malformed parameter, quoted back in the error


def int_param(params: dict[str, str], name: str, default: int) -> int:
    """An integer form or query parameter; a malformed one is the caller's error (400)."""
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, "invalid_request_error", f"Invalid integer: {raw[:QUOTED_VALUE_MAX_CHARS]!r}",
                       param=name) from None
