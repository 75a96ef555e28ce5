"""Load: send one page's decisions to Customer.io with bounded concurrency.

One user's calls (identify chunks, then its events) always run in order on one thread;
different users run in parallel. All threads share the client's rate limiter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cio_sync.pipeline.breaker import CONSECUTIVE_TRANSIENT_LIMIT, Breaker
from cio_sync.pipeline.senders import run_groups
from cio_sync.rules.mapping import chunk_attributes
from cio_sync.rules.plan import DELETE, INSERT, UPDATE, UserPlan
from connectors.customerio import CustomerIoClient
from connectors.http import AuthError, PermanentError, TransientError


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


def push_user(client: CustomerIoClient, plan: UserPlan, max_attributes_per_call: int,
              after_identify: Callable[[UserPlan, UserOutcome], None] | None = None) -> UserOutcome:
    outcome = UserOutcome(plan)
    assert plan.target_id is not None, "only plans with an action are pushed"
    try:
        if plan.action == DELETE:
            client.delete(plan.target_id)
            outcome.delete_calls += 1
        else:
            assert plan.mapped is not None
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
    breaker: Breaker | None = None,
) -> list[UserOutcome]:
    """Returns one outcome per plan with an action. Raises AuthError at once on 401/403;
    raises CustomerIoUnavailable (carrying the outcomes so far) when the breaker (the phase's,
    or one for this page) opens."""
    work = [p for p in plans if p.action in (INSERT, UPDATE, DELETE)]
    breaker = breaker or Breaker()

    def run(plan: UserPlan) -> UserOutcome:
        if breaker.stopped():
            return UserOutcome(plan, error_kind="not_attempted", error="not attempted: the page was stopped")
        try:
            outcome = push_user(client, plan, max_attributes_per_call, after_identify)
        except AuthError as exc:
            breaker.trip(exc)
            return UserOutcome(plan, error_kind="not_attempted", error=str(exc))
        breaker.record(outcome.error_kind == "transient")
        return outcome

    outcomes = run_groups(work, run, concurrency, "cio-push")
    breaker.raise_fatal()
    if breaker.open:
        raise CustomerIoUnavailable(outcomes)
    return outcomes


__all__ = ["CONSECUTIVE_TRANSIENT_LIMIT", "CustomerIoUnavailable", "UserOutcome", "push_page", "push_user"]
