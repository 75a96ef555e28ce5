"""The one sender pool: groups of work run in parallel, each group's items in order.

A user's calls (identify chunks, then its events; or a chain of v2 batch requests that
carry one user's entries) must reach Customer.io in order, so they form one group that a
single thread works through; different groups run side by side, bounded by
`push_concurrency`. All threads share the client's rate limiter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

G = TypeVar("G")
R = TypeVar("R")


def run_groups(groups: Sequence[G], work: Callable[[G], R], concurrency: int, name: str = "cio-send") -> list[R]:
    """`work(group)` for every group, at most `concurrency` at once; results in input order.
    An exception raised by `work` is re-raised here once every started group has ended."""
    if concurrency <= 1 or len(groups) <= 1:
        return [work(group) for group in groups]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(groups)), thread_name_prefix=name) as pool:
        return list(pool.map(work, groups))
