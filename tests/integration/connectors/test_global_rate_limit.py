"""The Customer.io budget shared through a Prefect global concurrency limit."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from connectors.global_rate_limit import GlobalRateLimiter, ensure_global_limit


@pytest.mark.usefixtures("prefect_harness")
def test_the_budget_throttles_against_a_real_prefect_api():
    name = f"test-budget-{uuid.uuid4().hex[:8]}"
    limit = ensure_global_limit(50, burst=6, name=name)
    assert (limit.limit, limit.slot_decay_per_second, limit.active) == (6, 50.0, True)

    limiter = GlobalRateLimiter(name=name)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda _: limiter.acquire(), range(60)))
    elapsed = time.monotonic() - started
    assert limiter.block_size == 2 and limiter.blocks_taken == 30  # blocks of a third of the limit
    # 60 requests at 50/s with a burst of 6 cannot take less than (60 - 6) / 50 s.
    assert elapsed >= (60 - 6) / 50 * 0.95, elapsed


@pytest.mark.usefixtures("prefect_harness")
def test_a_missing_limit_is_created_on_first_use():
    from prefect.client.orchestration import get_client

    name = f"test-budget-{uuid.uuid4().hex[:8]}"
    limiter = GlobalRateLimiter(name=name, requests_per_second_if_missing=30)
    limiter.acquire()
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
    assert (limit.limit, limit.slot_decay_per_second) == (3, 30.0)
    assert limiter.block_size == 1


@pytest.mark.usefixtures("prefect_harness")
def test_an_existing_limit_is_not_reshaped_on_first_use():
    """`cio-sync setup` owns the budget: a run must not reset it to its own default."""
    name = f"test-budget-{uuid.uuid4().hex[:8]}"
    ensure_global_limit(20, burst=2, name=name)
    limiter = GlobalRateLimiter(name=name, requests_per_second_if_missing=500)
    limiter.acquire()
    limit = ensure_global_limit(name=name, update=False)
    assert (limit.limit, limit.slot_decay_per_second) == (2, 20.0)
