"""Load: send one page's decisions to Customer.io with bounded concurrency.

One user's calls (unsuppress, the id change, identify chunks, then its events) always run
in order on one thread; different users run in parallel. All threads share the client's
rate limiter.

An id change with `on_id_change=merge` is three steps: an empty identify of the new id
(Customer.io merges only into a person that exists), `POST /api/v1/merge_customers` with the
new id as primary and the old as secondary (the old person's activity moves over, then it is
deleted; its email no longer blocks the new person), then the identify calls. With
`delete_old` only the new person is identified here: deleting the old one is destructive, so
the users page plans it and the deletion guard sends it at the end of the run
(cio_sync/pipeline/deletions.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from cio_sync.pipeline.breaker import CONSECUTIVE_TRANSIENT_LIMIT, Breaker
from cio_sync.pipeline.senders import run_groups
from cio_sync.rules.plan import (
    DELETE,
    DELETE_OLD,
    INSERT,
    MERGE,
    SUPPRESS,
    UNSET_SEGMENTS,
    UPDATE,
    UserPlan,
    identify_attributes,
)
from connectors.customerio import CustomerIoClient
from connectors.customerio_batch import v2_identifiers
from connectors.http import ApiError, AuthError, PermanentError, TransientError

PUSHED_ACTIONS = (INSERT, UPDATE, DELETE, SUPPRESS, UNSET_SEGMENTS)


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
    calls: Counter = field(default_factory=Counter)  # merge / suppress / unsuppress calls accepted
    moved: bool = False  # the old person of an id change is gone (merged or deleted)
    unsuppressed: bool = False  # the suppressed identifier was unsuppressed
    # Each Customer.io call made for the person, in order: {"call", "status", "error"} (v1: one
    # per HTTP call; v2: one per batch entry). What the sync log keeps.
    log: list[dict] = field(default_factory=list)


def logged(outcome: UserOutcome, call: str, send: Callable[[], None]) -> None:
    """Runs one Customer.io call for the person, noting it in `outcome.log` (then re-raises)."""
    try:
        send()
    except ApiError as exc:
        outcome.log.append({"call": call, "status": exc.status, "error": exc.message})
        raise
    outcome.log.append({"call": call, "status": 200, "error": None})


def identifiers(identifier: str, user_id_mapping: str | None) -> dict[str, str]:
    """`{"id"|"email"|"cio_id": value}` for a merge body (the same rule as v2 identifiers)."""
    return v2_identifiers(identifier, user_id_mapping or "external_id")


def push_user(
    client: CustomerIoClient,
    plan: UserPlan,
    max_attributes_per_call: int,
    after_identify: Callable[[UserPlan, UserOutcome], None] | None = None,
) -> UserOutcome:
    outcome = UserOutcome(plan)
    target = plan.target_id
    assert target is not None, "only plans with an action are pushed"
    try:
        if plan.action == DELETE:
            logged(outcome, "delete", lambda: client.delete(target))
            outcome.delete_calls += 1
        elif plan.action == SUPPRESS:
            logged(outcome, "suppress", lambda: client.suppress(target))
            outcome.calls["suppress"] += 1
        else:
            _before_identify(client, plan, outcome)
            # unset_segments keeps the person only if it is still there: never recreate it.
            reserved: dict[str, object] = {"_update": True} if plan.update_only or plan.action == UNSET_SEGMENTS else {}
            if plan.timestamp is not None:
                reserved["_timestamp"] = plan.timestamp
            chunks = identify_attributes(plan, max_attributes_per_call)
            for number, chunk in enumerate(chunks, 1):
                body = {**chunk, **reserved}
                logged(outcome, f"identify {number}/{len(chunks)}", partial(client.identify, target, body))
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


def _before_identify(client: CustomerIoClient, plan: UserPlan, outcome: UserOutcome) -> None:
    """Unsuppress a returning person; move the person of an id change to its new id."""
    target = plan.target_id
    assert target is not None
    if plan.unsuppress_id is not None:
        unsuppress_id = plan.unsuppress_id
        logged(outcome, "unsuppress", lambda: client.unsuppress(unsuppress_id))
        outcome.calls["unsuppress"] += 1
        outcome.unsuppressed = True
    if plan.previous_id is None or plan.id_change is None:
        return
    previous_id = plan.previous_id
    if plan.id_change == DELETE_OLD:
        return  # the old person is deleted by the deletion guard, once the new one is identified
    if plan.id_change == MERGE:
        # The primary must exist before the merge.
        logged(outcome, "identify (the merge's primary)", lambda: client.identify(target, {}))
        outcome.identify_calls += 1
        primary, secondary = identifiers(target, plan.target_mapping), identifiers(previous_id, plan.previous_mapping)
        try:
            logged(outcome, "merge", lambda: client.merge(primary, secondary))
            outcome.calls["merge"] += 1
        except PermanentError as exc:
            if exc.status != 404:
                raise
            # 404: nobody has the old id any more (deleted in Customer.io meanwhile): nothing to merge.
    outcome.moved = True


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
    work = [p for p in plans if p.action in PUSHED_ACTIONS]
    breaker = breaker or Breaker()

    def run(plan: UserPlan) -> UserOutcome:
        if breaker.stopped():
            return UserOutcome(plan, error_kind="not_attempted", error="not attempted: the page was stopped")
        try:
            outcome = push_user(client, plan, max_attributes_per_call, after_identify)
        except AuthError as exc:
            breaker.trip(exc)
            failed = UserOutcome(plan, error_kind="not_attempted", error=str(exc))
            failed.log.append({"call": "(credentials rejected)", "status": exc.status, "error": exc.message})
            return failed
        breaker.record(outcome.error_kind == "transient")
        return outcome

    outcomes = run_groups(work, run, concurrency, "cio-push")
    breaker.raise_fatal()
    if breaker.open:
        raise CustomerIoUnavailable(outcomes)
    return outcomes


__all__ = [
    "CONSECUTIVE_TRANSIENT_LIMIT",
    "PUSHED_ACTIONS",
    "CustomerIoUnavailable",
    "UserOutcome",
    "push_page",
    "push_user",
]
