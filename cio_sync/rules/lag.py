"""Lag figures of a run (p50, p95, max seconds), merged batch by batch or page by page without
keeping every delay: pure."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LagHistogram:
    """Lags in seconds, merged page by page without keeping them: counts per fixed bucket
    (each bucket 20% wider than the one before, from 0.1 s), plus the exact maximum. A
    percentile is its bucket's upper bound (at most 20% above the true value, never above the
    maximum)."""

    FIRST = 0.1
    GROWTH = 1.2

    buckets: Counter[int] = field(default_factory=Counter)  # bucket index → lags
    count: int = 0
    max: float = 0.0

    def add(self, lag: float) -> None:
        lag = max(0.0, lag)  # a clock a little ahead of ours is no lag
        index = 0 if lag <= self.FIRST else math.ceil(math.log(lag / self.FIRST, self.GROWTH))
        self.buckets[index] += 1
        self.count += 1
        self.max = max(self.max, lag)

    def merge(self, other: LagHistogram) -> None:
        self.buckets.update(other.buckets)
        self.count += other.count
        self.max = max(self.max, other.max)

    def percentile(self, fraction: float) -> float | None:
        if not self.count:
            return None
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                bound: float = self.FIRST * math.pow(self.GROWTH, index)
                return min(self.max, bound)
        return self.max

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "p50_seconds": self.percentile(0.5),
            "p95_seconds": self.percentile(0.95),
            "max_seconds": self.max if self.count else None,
        }

    def figures(self) -> dict[str, float | None]:
        """`{"p50", "p95", "max"}` in seconds rounded to 0.1 s; all None when nothing was measured."""
        if not self.count:
            return {"p50": None, "p95": None, "max": None}
        return {
            "p50": round(self.percentile(0.5) or 0.0, 1),
            "p95": round(self.percentile(0.95) or 0.0, 1),
            "max": round(self.max, 1),
        }
