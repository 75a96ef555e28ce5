"""One Customer.io request budget shared by every shard, worker and machine.

Customer.io limits requests per workspace, not per process: four shards each limited to
100 requests/s in-process would send 400/s together. The shared budget is a Prefect
global concurrency limit used as a rate limit: its slots decay at `requests_per_second`,
and `limit` slots may be taken at once (the burst).

Taking one slot per request would cost an API round trip per request (and the first
acquisition in a process takes about 2 s), so `GlobalRateLimiter` takes slots in blocks
(a third of `limit`) and hands them out locally, one per request. It keeps the in-process
token bucket in front, so one process never bursts past its own limit either.

Why a third: Prefect's server resets a limit's decay clock on every refused request
without decaying its slots, so waiting clients slow the decay down. Measured with 4
processes on a 100/s, limit-10 budget: blocks of 10 (the whole limit) starve (< 10/s),
blocks of 5 reach about 58/s, blocks of 3 about 71/s; the busiest second stayed at or
under 100 in every case.

Unused slots of a block are simply lost when a run ends: the budget errs on the slow side.
Every HTTP attempt takes a slot, retries included: `ApiClient.request` (connectors/http.py)
calls `acquire()` before each one, so a storm of 429/5xx cannot push the real rate past
the budget.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

from connectors.ratelimit import LocalLimiter

GLOBAL_LIMIT_NAME = "customerio-requests"
DEFAULT_REQUESTS_PER_SECOND = 100.0

logger = logging.getLogger(__name__)


def limit_shape(requests_per_second: float, burst: int | None = None) -> tuple[int, float]:
    """(limit, slot_decay_per_second) of the Prefect limit for a budget of
    `requests_per_second`.

    The burst defaults to a tenth of a second's budget, like the in-process bucket. It
    bounds what can go out at once: any one-second window sees at most about
    `requests_per_second + burst` requests, so a small burst keeps the window close to the
    budget.
    """
    if requests_per_second <= 0:
        raise ValueError("requests_per_second must be positive")
    if burst is None:
        burst = max(1, math.ceil(requests_per_second / 10))
    if burst < 1:
        raise ValueError("burst must be at least 1")
    return int(burst), float(requests_per_second)


def ensure_global_limit(
    requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND,
    burst: int | None = None,
    name: str = GLOBAL_LIMIT_NAME,
    update: bool = True,
) -> Any:
    """Creates the limit, or (with `update`) brings an existing one to this shape.
    Returns it as the Prefect API reads it back. Needs a Prefect API (server or Cloud)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    limit, decay = limit_shape(requests_per_second, burst)
    with get_client(sync_client=True) as client:
        if update:
            client.upsert_global_concurrency_limit_by_name(name, limit, slot_decay_per_second=decay)
        else:
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                try:
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=limit, slot_decay_per_second=decay)
                    )
                except ObjectAlreadyExists:
                    pass  # another shard created it at the same moment
        return client.read_global_concurrency_limit_by_name(name)


def _prefect_rate_limit(name: str, slots: int) -> None:
    from prefect.concurrency.sync import rate_limit

    # strict: a missing or misnamed limit must fail the run, not silently lift the budget.
    rate_limit(name, occupy=slots, strict=True)


class GlobalRateLimiter:
    """A drop-in for connectors.ratelimit.RateLimiter (`acquire()` once per request).

    Thread-safe: the push threads of a page share it. While one thread waits for the next
    block from Prefect the others wait for the same block instead of asking too.
    """

    def __init__(
        self,
        local: LocalLimiter | None = None,
        name: str = GLOBAL_LIMIT_NAME,
        requests_per_second_if_missing: float = DEFAULT_REQUESTS_PER_SECOND,
        take_slots: Callable[[str, int], None] = _prefect_rate_limit,
        read_block_size: Callable[[str, float], int] | None = None,
    ):
        self.local = local
        self.name = name
        self.requests_per_second_if_missing = requests_per_second_if_missing
        self._take_slots = take_slots
        self._read_block_size = read_block_size or _block_size_from_prefect
        self.block_size: int | None = None  # a third of the limit, learnt on first use
        self._available = 0
        self._lock = threading.Lock()
        self.blocks_taken = 0

    @classmethod
    def in_front_of(
        cls, local: LocalLimiter | None, requests_per_second: float, name: str = GLOBAL_LIMIT_NAME
    ) -> GlobalRateLimiter:
        """The shared budget in front of a process's own limiter (which keeps capping the
        process). A limit created on first use (no `cio-sync setup` yet) takes
        `requests_per_second` as the workspace budget."""
        return cls(
            local=local, name=name, requests_per_second_if_missing=requests_per_second or DEFAULT_REQUESTS_PER_SECOND
        )

    def acquire(self) -> None:
        if self.local is not None:
            self.local.acquire()
        with self._lock:
            if self._available == 0:
                if self.block_size is None:
                    self.block_size = self._read_block_size(self.name, self.requests_per_second_if_missing)
                self._take_slots(self.name, self.block_size)
                self.blocks_taken += 1
                self._available = self.block_size
            self._available -= 1


def _block_size_from_prefect(name: str, requests_per_second_if_missing: float) -> int:
    """A third of the limit (see the module docstring; more than the limit would be refused
    outright). Creates the limit on a first run where `cio-sync setup` was never run."""
    limit = ensure_global_limit(requests_per_second_if_missing, name=name, update=False)
    if not limit.active or not limit.slot_decay_per_second:
        # An inactive limit is skipped by Prefect and one without decay is refused for
        # rate limiting: say so here rather than in a confusing error later.
        raise RuntimeError(
            f"The Prefect global concurrency limit {name!r} must be active and have a slot decay; "
            "run `cio-sync setup` to reset it."
        )
    block = max(1, int(limit.limit) // 3)
    logger.info(
        "global Customer.io budget %r: %s requests/s, burst %d, blocks of %d",
        name,
        limit.slot_decay_per_second,
        limit.limit,
        block,
    )
    return block
