"""One circuit breaker for every phase that sends to a service (users, events, webhook drain).

Each failure that reaches the breaker has already spent the HTTP client's whole retry budget
(connectors/http.py). After `limit` of those in a row the service is taken to be down, and
the phase stops instead of burning the same budget on every remaining item: what it did not
send is kept for the next run (a failed batch, which the next scheduled sync retries first, or
pending webhook rows). A fatal error (401/403)
stops the phase at once and is re-raised by the caller.
"""

from __future__ import annotations

import threading

# After this many items in a row fail transiently (each after its full retry budget),
# the service is considered down.
CONSECUTIVE_TRANSIENT_LIMIT = 3


class Breaker:
    """Thread-safe: the sender threads of one phase share one breaker."""

    def __init__(self, limit: int = CONSECUTIVE_TRANSIENT_LIMIT):
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.consecutive = 0
        self.open = False
        self.fatal: BaseException | None = None
        self._lock = threading.Lock()

    def record(self, transient_failure: bool) -> None:
        """One item's final outcome: a transient failure counts, anything else resets."""
        with self._lock:
            self.consecutive = self.consecutive + 1 if transient_failure else 0
            if self.consecutive >= self.limit:
                self.open = True

    def trip(self, error: BaseException) -> None:
        """A fatal error (e.g. rejected credentials): stop everything, the caller re-raises it."""
        with self._lock:
            if self.fatal is None:
                self.fatal = error

    def stopped(self) -> bool:
        return self.open or self.fatal is not None

    def raise_fatal(self) -> None:
        if self.fatal is not None:
            raise self.fatal
