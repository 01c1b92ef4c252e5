"""Markdown building blocks of the report: numbers, tables, sections. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence

from bench.stats import LatencySummary


def fmt(v: float | int | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) or (float(v).is_integer() and abs(v) >= 100):
        return f"{int(v):,}"
    return f"{v:,.{digits}f}"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; numbers right-aligned, None shown as '-'."""
    def cell(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, (int, float)):
            return fmt(v)
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
    for row in rows:
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def section(title: str, intro: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A `##` section of one table, or nothing when there are no rows."""
    if not rows:
        return []
    return ["", f"## {title}", "", intro, "", render_table(headers, rows)]


def lat(s: LatencySummary) -> list[float | None]:
    """p50, p95, p99 and max of a latency summary, as table cells."""
    return [s.p50, s.p95, s.p99, s.max]


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**not met**")
