"""A thread-safe token bucket: one per Customer.io workspace, shared by every sender thread."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class LocalLimiter(Protocol):
    """Anything that hands out one request slot per `acquire()`."""

    def acquire(self) -> None: ...


class RateLimiter:
    def __init__(self, per_second: float, burst: float | None = None):
        if per_second <= 0:
            raise ValueError("per_second must be positive; use no limiter to disable limiting")
        self.per_second = float(per_second)
        # A small burst keeps short pauses cheap without letting a second's worth out at once.
        self.capacity = float(burst if burst is not None else max(1.0, per_second / 10))
        self._tokens = self.capacity
        self._updated = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.per_second)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self.per_second
            time.sleep(wait)


def make_rate_limiter(per_second: float) -> RateLimiter | None:
    """0 (or less) turns client-side limiting off, as the benchmark does."""
    return RateLimiter(per_second) if per_second and per_second > 0 else None
