"""Every HTTP attempt, retries included, takes a rate-limit slot; Retry-After is honoured
but never past HTTP_BACKOFF_MAX_SECONDS. Against the Customer.io simulator over loopback."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from connectors.customerio import CustomerIoClient
from connectors.global_rate_limit import GlobalRateLimiter, ensure_global_limit
from connectors.http import RetryPolicy
from connectors.ratelimit import RateLimiter
from tests.support.sims import CIO_API_KEY, CIO_SITE_ID


class CountingLimiter(RateLimiter):
    """The real token bucket, counting the slots it hands out."""

    def __init__(self, per_second: float):
        super().__init__(per_second)
        self.acquired = 0
        self._count_lock = threading.Lock()

    def acquire(self) -> None:
        super().acquire()
        with self._count_lock:
            self.acquired += 1


def busiest_second(timestamps: list[float]) -> int:
    """The most requests any one-second window [t, t + 1) holds."""
    times = sorted(timestamps)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_busiest_second_counts_a_sliding_window():
    assert busiest_second([0.0, 0.5, 0.99, 1.0, 1.5]) == 3
    assert busiest_second([0.0, 2.0, 4.0]) == 1


def test_retries_take_a_slot_so_429s_never_push_past_the_limit(cio_sim):
    cio_sim.faults.error_rate(0.3, statuses=(429,), seed=7)
    limiter = CountingLimiter(20)
    retry = RetryPolicy(total=10, backoff_factor=0.01, backoff_jitter=0.0, timeout=5)
    with CustomerIoClient(cio_sim.url, CIO_SITE_ID, CIO_API_KEY, retry=retry, rate_limiter=limiter) as client:
        with ThreadPoolExecutor(max_workers=4) as pool:  # push_concurrency's default
            list(pool.map(lambda n: client.identify(f"u-{n}", {"email": f"u{n}@example.com"}), range(60)))

    journal = [e for e in cio_sim.journal() if e["method"] == "PUT"]
    statuses = [e["status"] for e in journal]
    assert statuses.count(200) == 60 and len(cio_sim.people) == 60
    assert statuses.count(429) >= 15  # the storm happened: about 30% of the attempts
    assert limiter.acquired == len(journal) == client.requests_sent  # one slot per attempt, retries included
    peak = busiest_second([e["ts"] for e in journal])
    print(f"{len(journal)} requests for 60 calls, busiest second {peak}")
    assert peak <= 22  # 20/s plus the bucket's burst of 2


def test_retry_after_is_honoured_up_to_the_backoff_maximum(cio_sim):
    cio_sim.faults.fail_next(1, status=429, retry_after=60)
    retry = RetryPolicy(total=3, backoff_factor=0.01, backoff_max=2.0, backoff_jitter=0.0, timeout=5)
    with CustomerIoClient(cio_sim.url, CIO_SITE_ID, CIO_API_KEY, retry=retry) as client:
        started = time.monotonic()
        client.identify("u-1", {"email": "a@b.c"})
        waited = time.monotonic() - started
    assert [e["status"] for e in cio_sim.journal()] == [429, 200]
    assert 1.5 <= waited <= 5, waited  # about 2 s: not 60, not 0.01


def test_a_short_retry_after_is_waited_in_full(cio_sim):
    cio_sim.faults.fail_next(1, status=503, retry_after=1)
    retry = RetryPolicy(total=3, backoff_factor=0.01, backoff_max=30.0, backoff_jitter=0.0, timeout=5)
    with CustomerIoClient(cio_sim.url, CIO_SITE_ID, CIO_API_KEY, retry=retry) as client:
        started = time.monotonic()
        client.identify("u-1", {"email": "a@b.c"})
        waited = time.monotonic() - started
    assert [e["status"] for e in cio_sim.journal()] == [503, 200]
    assert waited >= 0.9, waited


@pytest.mark.usefixtures("prefect_harness")
def test_retries_take_slots_from_the_prefect_global_budget_too(cio_sim):
    name = f"test-budget-{uuid.uuid4().hex[:8]}"
    ensure_global_limit(50, burst=3, name=name)  # blocks of one slot: one block per attempt
    limiter = GlobalRateLimiter(name=name)
    cio_sim.faults.fail_next(3, status=429)
    cio_sim.faults.fail_next(1, drop=True)
    retry = RetryPolicy(total=5, backoff_factor=0.01, backoff_jitter=0.0, timeout=5)
    with CustomerIoClient(cio_sim.url, CIO_SITE_ID, CIO_API_KEY, retry=retry, rate_limiter=limiter) as client:
        client.identify("u-1", {"email": "a@b.c"})
    assert [e["status"] for e in cio_sim.journal()] == [429, 429, 429, None, 200]
    assert limiter.block_size == 1 and limiter.blocks_taken == 5
