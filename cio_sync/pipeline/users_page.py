"""One page of users: diff → push → record state → write back (the `sync-users-page` task's work).

The state rows and the stream cursor are written in one transaction, after Customer.io
answered: a crash before it re-sends the page (idempotent identify calls), a crash after
it sends nothing again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cio_sync.pipeline.batch_push import push_page_v2
from cio_sync.pipeline.breaker import CONSECUTIVE_TRANSIENT_LIMIT, Breaker
from cio_sync.pipeline.phase import Phase
from cio_sync.pipeline.push import CustomerIoUnavailable, UserOutcome, push_page
from cio_sync.pipeline.summary import SyncSummary
from cio_sync.pipeline.sync_log import log_rows, plan_sample, run_id_or_local
from cio_sync.pipeline.writeback import WriteBackPipeline, write_back
from cio_sync.rules.mapping import tracked_names
from cio_sync.rules.plan import (
    DELETE,
    DELETE_OLD,
    INSERT,
    SKIP,
    SUPPRESS,
    UNSET_SEGMENTS,
    UPDATE,
    UserPlan,
    plan_page,
)
from cio_sync.runtime import SyncRuntime
from cio_sync.store.cursors import Cursor, write_cursor
from cio_sync.store.db import utcnow
from cio_sync.store.deletions import cancel_for_users, plan_deletions
from cio_sync.store.failed import USERS
from cio_sync.store.sync_log import latest_logged_values, write_log_rows
from cio_sync.store.users import live_cio_id_holders, load_user_state, record_user_outcomes, reseal_unchanged

# Why a planned deletion is planned (decision rules 3 and 4; an id change with delete_old).
LEFT_SEGMENTS = "left every synchronized segment"
ID_CHANGED = "the Customer.io id changed"
# Never sent from a page: the deletion guard sends them once the run's every decision is known.
GUARDED = (DELETE, SUPPRESS)


class PageIncomplete(Exception):
    """Customer.io stopped answering mid-page. What succeeded is recorded; the users not sent are
    saved as a failed batch and the stream's cursor moves past the page with them (a rerun has
    no cursor and files nothing). The next scheduled run retries the batch before anything else
    (cio_sync/pipeline/rerun.py, `retry_failed_batches`)."""

    def __init__(self, summary: SyncSummary, message: str):
        self.summary = summary
        super().__init__(message)


def summarize_plans(plans: list[UserPlan], summary: SyncSummary) -> None:
    for plan in plans:
        summary.decisions[plan.action] += 1
        if plan.action == SKIP:
            summary.skip_reasons[plan.reason.split(":")[0]] += 1
            if plan.reason == "duplicate_id" and plan.mapped is not None:
                summary.add_duplicate(
                    f"Customer.io id {plan.mapped.cio_id!r}: Hull user {plan.hull_id} skipped, "
                    "another Hull user holds that id"
                )
        if plan.mapped is not None and plan.action != SKIP:
            for name, _reason in plan.mapped.dropped:
                summary.dropped_attributes[name] += 1
            if plan.mapped.segments_left_out:
                summary.segments_left_out["users"] += 1
                summary.segments_left_out["segments"] += plan.mapped.segments_left_out
        if plan.previous_id is not None and plan.action == UPDATE:
            summary.id_changes[plan.id_change or "ignore"] += 1
        for name in plan.unset_attributes:
            summary.removed_attributes[name] += 1


def deletion_row(plan: UserPlan) -> dict[str, Any]:
    """The planned row of a delete or a suppress (the person left every synchronized segment)."""
    return {
        "hull_id": plan.hull_id,
        "action": plan.action,
        "cio_id": plan.target_id,
        "reason": LEFT_SEGMENTS if plan.action == DELETE else f"{LEFT_SEGMENTS} (on_segment_exit=suppress)",
        "email": (plan.mapped.email if plan.mapped is not None else None),
    }


def delete_old_row(plan: UserPlan) -> dict[str, Any]:
    """The planned row of an id change's old person (on_id_change=delete_old)."""
    return {
        "hull_id": plan.hull_id,
        "action": DELETE_OLD,
        "cio_id": plan.previous_id,
        "reason": f"{ID_CHANGED} to {plan.target_id!r} (on_id_change=delete_old)",
        "email": (plan.mapped.email if plan.mapped is not None else None),
    }


def outcome_row(outcome: UserOutcome, now) -> dict[str, Any]:
    plan = outcome.plan
    row: dict[str, Any] = {"hull_id": plan.hull_id, "last_decision": plan.action}
    if outcome.ok:
        row.update(last_error=None, last_error_at=None, rejected_hash=None, writeback_pending=True, synced_at=now)
        if plan.action in (DELETE, SUPPRESS):
            row.update(deleted_at=now, segment_ids=[])
            if plan.action == SUPPRESS:
                row["suppressed_at"] = now
        elif plan.action == UNSET_SEGMENTS:
            # The person stays; an empty segment list marks it unset, and no hash makes its
            # return to a segment a full update.
            row.update(segment_ids=[], attributes_hash=None, attribute_digests=None, source_digest=None)
        else:
            assert plan.mapped is not None
            row.update(
                cio_id=plan.target_id,
                cio_id_mapping=plan.target_mapping,
                attributes_hash=plan.mapped.attributes_hash,
                source_digest=plan.source_seal,
                attribute_names=tracked_names(plan.mapped.attributes),
                attribute_digests=plan.mapped.attribute_digests,
                segment_ids=plan.mapped.whitelisted_segment_ids,
                deleted_at=None,
                suppressed_at=None,
            )
            if plan.action == INSERT:
                row["created_at"] = now
        return row
    row.update(last_error=outcome.error, last_error_at=now, writeback_pending=False)
    if outcome.error_kind == "permanent" and plan.mapped is not None and plan.action != DELETE:
        # Not tried again until a synchronized attribute changes (the users overlap re-reads it).
        row["rejected_hash"] = plan.mapped.attributes_hash
    if plan.action == INSERT and outcome.created:
        # Some chunks were accepted: the person exists and must be deletable later.
        assert plan.mapped is not None
        row.update(
            cio_id=plan.target_id,
            cio_id_mapping=plan.target_mapping,
            created_at=now,
            deleted_at=None,
            attribute_names=tracked_names(plan.mapped.attributes),
        )
    elif outcome.moved:
        # The old person is gone (merged or deleted): from now on the person is the new id.
        row.update(cio_id=plan.target_id, cio_id_mapping=plan.target_mapping, writeback_pending=True)
    if outcome.unsuppressed:
        row["suppressed_at"] = None
    return row


def record_page(
    runtime: SyncRuntime,
    outcomes: list[UserOutcome],
    summary: SyncSummary,
    cursor_name: str,
    next_cursor: Cursor | None,
    flow_run_id: str | None,
    phase: Phase | None = None,
    plans: list[UserPlan] | None = None,
) -> None:
    """`plans`: the page's decisions. Deletes and suppresses among them are recorded as planned
    (the deletion guard sends them at the end of the run), and so is the delete of the old
    person of each id change with `delete_old` whose new person Customer.io accepted; any other
    decision ends a user's planned delete or suppress."""
    now = utcnow()
    rows = [outcome_row(o, now) for o in outcomes]
    log = log_rows(plans or [], outcomes, run_id_or_local(flow_run_id), now, runtime.settings.sync_log_values)
    retryable = [o for o in outcomes if o.error_kind in ("transient", "not_attempted")]
    deferred = [deletion_row(p) for p in plans or [] if p.action in GUARDED]
    deferred += [
        delete_old_row(o.plan)
        for o in outcomes
        if o.ok and o.plan.id_change == DELETE_OLD and o.plan.previous_id is not None
    ]
    decided_otherwise = [
        p.hull_id for p in plans or [] if p.action not in GUARDED and (p.mapped is not None or p.unchanged_source)
    ]
    reseals = [
        (p.hull_id, p.mapped.attributes_hash, p.source_seal)
        for p in plans or []
        if p.reseal and p.mapped is not None and p.source_seal is not None
    ]
    with runtime.engine.begin() as connection:
        record_user_outcomes(connection, rows)
        reseal_unchanged(connection, reseals)
        write_log_rows(connection, log)
        plan_deletions(connection, deferred, flow_run_id)
        cancel_for_users(connection, decided_otherwise, "decided again without a delete")
        # A rerun of a failed batch (no cursor) reports what is left instead of filing a new batch.
        if retryable and next_cursor is not None:
            batch_id = (phase or Phase(USERS)).file_unsent(
                # Only the work: a rerun applies the settings of its own day. The settings of now
                # are kept only to tell, at rerun time, which of them changed since.
                connection,
                "hull_ids",
                [o.plan.hull_id for o in retryable],
                runtime.settings.snapshot(),
                next((o.error for o in retryable if o.error_kind == "transient"), retryable[0].error)
                or "unknown error",
                flow_run_id,
            )
            if batch_id is not None:  # a later page of the phase adds to the same batch
                summary.failed_batches.append(batch_id)
        if next_cursor is not None:
            write_cursor(connection, cursor_name, next_cursor)
    accepted_at = now.timestamp()
    for outcome in outcomes:
        mapped = outcome.plan.mapped
        if outcome.ok and mapped is not None and mapped.indexed_at is not None:
            summary.freshness.add(accepted_at - mapped.indexed_at)
        summary.calls["identify"] += outcome.identify_calls
        summary.calls["delete"] += outcome.delete_calls
        summary.calls.update(outcome.calls)
        if not outcome.ok:
            summary.failed_users[outcome.error_kind] += 1
            summary.add_error(f"user {outcome.plan.hull_id}: {outcome.error}")


def push_plans(
    runtime: SyncRuntime, plans: list[UserPlan], calls: Counter, breaker: Breaker | None = None
) -> list[UserOutcome]:
    """Sends `plans` through the API mode of the run's settings (v1 calls or v2 batches);
    `calls` counts v2 batch requests. Raises what the pushers raise (AuthError,
    CustomerIoUnavailable carrying the outcomes so far)."""
    settings = runtime.settings
    if settings.customerio_api == "v2_batch":
        return push_page_v2(
            runtime.customerio,
            plans,
            user_id_mapping=settings.user_id_mapping,
            max_attributes_per_call=settings.max_attributes_per_call,
            concurrency=settings.push_concurrency,
            calls=calls,
            breaker=breaker,
        )
    return push_page(
        runtime.customerio,
        plans,
        max_attributes_per_call=settings.max_attributes_per_call,
        concurrency=settings.push_concurrency,
        breaker=breaker,
    )


def dry_run_sample(runtime: SyncRuntime, plans: list[UserPlan], room: int) -> list[dict[str, Any]]:
    values = runtime.settings.sync_log_values
    if room <= 0:
        return []
    changing = [p for p in plans if p.action != SKIP][:room]
    old_values = latest_logged_values(runtime.engine, [p.hull_id for p in changing]) if values and changing else {}
    return plan_sample(changing, room, values, old_values)


@dataclass
class PlannedPage:
    """One page's plans, made ahead (`PagePlanner`) while the page before was pushed.

    Planning reads two things from state: the page's own rows, which no other page of the walk
    writes (keyset pages never share a user), and who holds the Customer.io ids the page sends
    (the `duplicate_id` rule), which the page before may change. So the plans are used only if
    the page shares no user with the pages recorded meanwhile and the holders of those ids are
    still the ones planning saw; otherwise the page is planned again."""

    users: list[dict[str, Any]]  # the very list planned
    plans: list[UserPlan]
    holder_ids: list[str] = field(default_factory=list)
    holders: dict[str, str] = field(default_factory=dict)

    @property
    def sends_nothing(self) -> bool:
        """Every user of the page is skipped (unchanged, not in a synchronized segment, ...):
        nothing goes to Customer.io and nobody is written back."""
        return all(p.action == SKIP for p in self.plans)

    def still_valid(self, runtime: SyncRuntime, recorded_since: set[str]) -> bool:
        if recorded_since & {p.hull_id for p in self.plans}:
            return False
        return not self.holder_ids or live_cio_id_holders(runtime.engine, self.holder_ids) == self.holders


def plan_users(runtime: SyncRuntime, users: list[dict[str, Any]]) -> PlannedPage:
    """Loads a page's state rows and plans it (map → decide → duplicate ids)."""
    ids = [u["id"] for u in users if isinstance(u, dict) and isinstance(u.get("id"), str)]
    state = load_user_state(runtime.engine, ids)
    planned = PlannedPage(users, [])

    def id_holders(cio_ids: list[str]) -> dict[str, str]:
        found = live_cio_id_holders(runtime.engine, cio_ids)
        planned.holder_ids, planned.holders = list(cio_ids), dict(found)
        return found

    planned.plans = plan_page(
        users, state, runtime.settings, runtime.segment_names, runtime.whitelisted_segment_ids, id_holders=id_holders
    )
    return planned


class PagePlanner:
    """Plans the next page of users in a background thread while the current one is pushed,
    recorded and written back, so that Customer.io is not left waiting while a page is mapped
    and diffed. `submit` takes a function that returns the next page's users (the prefetcher's
    read, which may still be in flight); `take` hands the plans to that page's sync, or None
    (the page is then planned there, as without a planner)."""

    def __init__(self, runtime: SyncRuntime):
        self.runtime = runtime
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cio-plan")
        self._ahead: Future[PlannedPage | None] | None = None
        self._recorded: set[str] = set()  # users recorded since the page ahead was planned

    def submit(self, next_users: Callable[[], list[dict[str, Any]] | None]) -> None:
        self._recorded = set()

        def work() -> PlannedPage | None:
            users = next_users()
            return plan_users(self.runtime, users) if users else None

        self._ahead = self._pool.submit(work)

    def recorded(self, users: list[dict[str, Any]]) -> None:
        """A page whose state was recorded while the page ahead was being planned."""
        self._recorded.update(u["id"] for u in users if isinstance(u, dict) and isinstance(u.get("id"), str))

    def take(self, users: list[dict[str, Any]]) -> PlannedPage | None:
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        try:
            planned = ahead.result()
        except Exception:  # planned again in the page's own sync, which raises it properly
            return None
        if planned is None or planned.users is not users:
            return None
        return planned if planned.still_valid(self.runtime, self._recorded) else None

    def close(self) -> None:
        self._ahead = None
        self._pool.shutdown(wait=True, cancel_futures=True)


def sync_page(
    runtime: SyncRuntime,
    users: list[dict[str, Any]],
    cursor_name: str,
    next_cursor: Cursor | None,
    flow_run_id: str | None = None,
    write_backs: WriteBackPipeline | None = None,
    phase: Phase | None = None,
    room: int = SyncSummary.MAX_PLAN_SAMPLE,
    planned: PlannedPage | None = None,
) -> SyncSummary:
    """Plans, pushes and records one page of users; the cursor moves to `next_cursor` in the
    same transaction as the page's state rows (None: not part of a stream, nothing moves).
    Write-backs go to `write_backs` (sent in the background) or, without it, out at once.
    `phase`: the users phase's breaker and failed batch, shared by its pages (default: this
    page's own). A dry run sends nothing and samples up to `room` of the people it would
    change, with old → new per changed attribute (the run's `sync-users-plan` artifact).
    `planned`: this page's plans, made ahead by a `PagePlanner` (which checked they are still
    valid); None: planned here."""
    breaker = phase.breaker if phase is not None else None
    summary = SyncSummary(pages=1, users_seen=len(users))
    settings = runtime.settings
    if planned is None or planned.users is not users:
        planned = plan_users(runtime, users)
    plans = planned.plans
    summarize_plans(plans, summary)
    if runtime.dry_run:
        summary.plan_sample = dry_run_sample(runtime, plans, room)
        return summary
    # Deletes and suppresses are never sent from a page (nor the delete of an id change's old
    # person, which the pushers leave out): the deletion guard sends them once the run's every
    # decision is known (cio_sync/pipeline/deletions.py).
    to_push = [p for p in plans if p.action not in GUARDED]

    try:
        outcomes = push_plans(runtime, to_push, summary.calls, breaker)
    except CustomerIoUnavailable as stopped:
        # Customer.io is down: what went through is recorded, the rest of the page becomes a
        # failed batch (the next scheduled run retries it first; `cio-sync failed rerun` at any
        # time), the cursor moves past the page, and the run stops here.
        record_page(runtime, stopped.args[0], summary, cursor_name, next_cursor, flow_run_id, phase=phase, plans=plans)
        batch_id = phase.failed_batch_id if phase is not None else next(iter(summary.failed_batches), None)
        if next_cursor is not None and batch_id is not None:
            where = (
                f"the unsent users of the page are saved in failed batch {batch_id}; "
                "the next scheduled run retries them first"
            )
        else:  # a rerun (its batch stays open), or the events phase identifying users (retried next run)
            where = "the unsent users are retried later"
        limit = breaker.limit if breaker is not None else CONSECUTIVE_TRANSIENT_LIMIT
        raise PageIncomplete(
            summary,
            f"Customer.io kept failing (429/5xx/timeouts) for {limit} users in a row even after retries, "
            f"so the {phase.kind if phase is not None else USERS} phase stopped; {where}.",
        ) from None

    record_page(runtime, outcomes, summary, cursor_name, next_cursor, flow_run_id, phase=phase, plans=plans)
    synced = [o.plan.hull_id for o in outcomes if o.ok]
    if synced and write_backs is not None:
        write_backs.submit(synced)  # sent while the next page is synced; counted at the end
    elif synced:
        sent, error = write_back(runtime.hull, runtime.engine, settings.user_id_mapping, hull_ids=synced)
        summary.writeback_sent += sent
        if error:
            summary.warnings.append(error)
    return summary


@dataclass
class QuietPage:
    """A page planned ahead that sends nothing, waiting to be recorded with the quiet pages next
    to it in one `sync-users-quiet-pages` task (cio_sync/settings.py, `QUIET_PAGES_PER_TASK`)."""

    users: list[dict[str, Any]]
    next_cursor: Cursor
    planned: PlannedPage
    remaining: int | None = None


def sync_quiet_pages(
    runtime: SyncRuntime,
    pages: list[QuietPage],
    cursor_name: str,
    flow_run_id: str | None = None,
    write_backs: WriteBackPipeline | None = None,
    phase: Phase | None = None,
    room: int = SyncSummary.MAX_PLAN_SAMPLE,
) -> list[SyncSummary]:
    """Records consecutive pages that send nothing, in order, each exactly as `sync_page` would
    (its own transaction, its cursor with it); one summary per page. Why one task for many:
    a Prefect task run costs the server ~40 ms of CPU, which for a page of unchanged users is
    more than the page's own work."""
    summaries = []
    for page in pages:
        summaries.append(
            sync_page(
                runtime, page.users, cursor_name, page.next_cursor, flow_run_id, write_backs, phase, room, page.planned
            )
        )
        room -= len(summaries[-1].plan_sample)
    return summaries
