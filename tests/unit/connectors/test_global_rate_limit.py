"""The Customer.io budget shared through a Prefect global concurrency limit."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from connectors.global_rate_limit import GlobalRateLimiter, limit_shape


def test_limit_shape_decays_at_the_budget_and_bursts_a_tenth_of_it():
    assert limit_shape(100) == (10, 100.0)
    assert limit_shape(40) == (4, 40.0)
    assert limit_shape(5) == (1, 5.0)
    assert limit_shape(100, burst=25) == (25, 100.0)
    with pytest.raises(ValueError):
        limit_shape(0)


class CountingLocal:
    def __init__(self):
        self.calls = 0
        self._lock = threading.Lock()

    def acquire(self):
        with self._lock:
            self.calls += 1


def test_slots_are_taken_in_blocks_shared_by_threads():
    taken: list[tuple[str, int]] = []
    local = CountingLocal()
    limiter = GlobalRateLimiter(
        local=local,
        name="budget",
        take_slots=lambda name, slots: taken.append((name, slots)),
        read_block_size=lambda name, per_second: 10,
    )
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: limiter.acquire(), range(95)))
    assert local.calls == 95  # the in-process bucket still sees every request
    assert taken == [("budget", 10)] * 10  # ceil(95 / 10) Prefect calls, never one per request
    assert limiter.blocks_taken == 10
