"""`Prefer: wait=N` (RFC 7240): how long a client asks a request to wait for its outcome."""

from __future__ import annotations

import math

from aiohttp import web


def parse_wait(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def prefer_wait(header: str | None) -> float | None:
    """`Prefer: wait=N` (RFC 7240) of a request's (first) Prefer header. A preference is a hint:
    a malformed one is ignored."""
    if not header:
        return None
    for part in header.split(","):
        for token in part.split(";"):
            name, _, value = token.strip().partition("=")
            if name.strip().lower() == "wait":
                return parse_wait(value.strip().strip('"'))
    return None


def capped_prefer_wait_s(request: web.Request, wait_max_s: float) -> float:
    """Seconds the client prefers to wait (0: answer at once), never more than `wait_max_s`."""
    return capped_wait_s(request.headers.get("Prefer"), wait_max_s)


def capped_wait_s(prefer: str | None, wait_max_s: float) -> float:
    """Seconds a Prefer header asks to wait (0: answer at once), never more than `wait_max_s`."""
    wait_s = prefer_wait(prefer)
    return min(wait_s, wait_max_s) if wait_s else 0.0


def preference_applied(wait_s: float) -> str:
    """The `Preference-Applied` value for a wait that was honoured."""
    return f"wait={int(wait_s)}" if wait_s == int(wait_s) else f"wait={wait_s:g}"
