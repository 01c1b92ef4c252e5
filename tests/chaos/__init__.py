"""Whole-system fault scenarios. `make chaos` runs them with floods FLASHSALE_CHAOS_SCALE times
larger (default 1: the sizes CI runs)."""

from __future__ import annotations

import os

SCALE = max(1, int(os.environ.get("FLASHSALE_CHAOS_SCALE", "1")))
# The bound of each scenario (tests/conftest.py), instead of pyproject's per-test `timeout`:
# floods, kills and restarts on a shared box, growing with the scale.
TIMEOUT_S = 900 * SCALE


def scaled(n: int) -> int:
    """A flood size, times the chaos scale."""
    return n * SCALE
