"""Lag figures (p50, p95, max) of a run's delays in seconds: pure, nearest-rank percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (not empty)."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def lag_figures(seconds: Sequence[float]) -> dict[str, float | None]:
    """`{"p50", "p95", "max"}` rounded to 0.1 s; all None when nothing was measured."""
    if not seconds:
        return {"p50": None, "p95": None, "max": None}
    values = sorted(max(0.0, s) for s in seconds)
    return {
        "p50": round(percentile(values, 0.50), 1),
        "p95": round(percentile(values, 0.95), 1),
        "max": round(values[-1], 1),
    }
