"""Load: send one page's decisions to Customer.io with bounded concurrency.

One user's calls (identify chunks, then its events) always run in order on one thread;
different users run in parallel. All threads share the client's rate limiter.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from cio_sync.mapping import chunk_attributes
from connectors.customerio import CustomerIoClient
from connectors.http import ApiError, AuthError, PermanentError, TransientError
from tasks.diff import DELETE, INSERT, UPDATE, UserPlan

# After this many users in a row fail with transient errors (each after its full retry
# budget), Customer.io is considered down: the page stops instead of burning retries.
CONSECUTIVE_TRANSIENT_LIMIT = 3


class CustomerIoUnavailable(Exception):
    """Customer.io kept failing transiently: the page is not committed past this point."""


@dataclass
class UserOutcome:
    plan: UserPlan
    identify_calls: int = 0
    delete_calls: int = 0
    created: bool = False  # at least one identify succeeded (the person exists)
    ok: bool = False
    error_kind: str | None = None  # permanent | transient | not_attempted
    error: str | None = None
    extra: dict = field(default_factory=dict)


class _Breaker:
    def __init__(self, limit: int):
        self.limit = limit
        self.consecutive = 0
        self.open = False
        self.fatal: BaseException | None = None
        self.lock = threading.Lock()

    def record(self, transient_failure: bool) -> None:
        with self.lock:
            self.consecutive = self.consecutive + 1 if transient_failure else 0
            if self.consecutive >= self.limit:
                self.open = True

    def stopped(self) -> bool:
        return self.open or self.fatal is not None


def push_user(client: CustomerIoClient, plan: UserPlan, max_attributes_per_call: int,
              after_identify: Callable[[UserPlan, UserOutcome], None] | None = None) -> UserOutcome:
    outcome = UserOutcome(plan)
    try:
        if plan.action == DELETE:
            client.delete(plan.target_id)
            outcome.delete_calls += 1
        else:
            for chunk in chunk_attributes(plan.mapped.attributes, max_attributes_per_call):
                client.identify(plan.target_id, chunk)
                outcome.identify_calls += 1
                outcome.created = True
            if after_identify is not None:
                after_identify(plan, outcome)
        outcome.ok = True
    except PermanentError as exc:
        outcome.error_kind, outcome.error = "permanent", str(exc)
    except TransientError as exc:
        outcome.error_kind, outcome.error = "transient", str(exc)
    return outcome


def push_page(
    client: CustomerIoClient,
    plans: list[UserPlan],
    *,
    max_attributes_per_call: int,
    concurrency: int,
    after_identify: Callable[[UserPlan, UserOutcome], None] | None = None,
) -> list[UserOutcome]:
    """Returns one outcome per plan with an action. Raises AuthError at once on 401/403;
    raises CustomerIoUnavailable (carrying the outcomes so far) when the breaker opens."""
    work = [p for p in plans if p.action in (INSERT, UPDATE, DELETE)]
    breaker = _Breaker(CONSECUTIVE_TRANSIENT_LIMIT)

    def run(plan: UserPlan) -> UserOutcome:
        if breaker.stopped():
            return UserOutcome(plan, error_kind="not_attempted", error="not attempted: the page was stopped")
        try:
            outcome = push_user(client, plan, max_attributes_per_call, after_identify)
        except AuthError as exc:
            breaker.fatal = exc
            return UserOutcome(plan, error_kind="not_attempted", error=str(exc))
        breaker.record(outcome.error_kind == "transient")
        return outcome

    if concurrency <= 1 or len(work) <= 1:
        outcomes = [run(plan) for plan in work]
    else:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cio-push") as pool:
            outcomes = list(pool.map(run, work))

    if breaker.fatal is not None:
        raise breaker.fatal
    if breaker.open:
        raise CustomerIoUnavailable(outcomes)
    return outcomes


__all__ = ["push_page", "push_user", "UserOutcome", "CustomerIoUnavailable", "ApiError"]
