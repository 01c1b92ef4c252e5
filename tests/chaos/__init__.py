"""Whole-system fault scenarios. `make chaos` runs them with floods FLASHSALE_CHAOS_SCALE times
larger (default 1: the sizes CI runs)."""

from __future__ import annotations

import os

SCALE = max(1, int(os.environ.get("FLASHSALE_CHAOS_SCALE", "1")))


def scaled(n: int) -> int:
    """A flood size, times the chaos scale."""
    return n * SCALE
