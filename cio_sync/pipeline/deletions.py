"""The deletion guard: planned removals are sent only here, once a run's every decision is known.

Users pages record as `planned` (cio_sync/store/deletions.py), instead of sending them, every
plan that removes a person from Customer.io: deletes (on_segment_exit=delete), suppresses
(on_segment_exit=suppress: deleted and suppressed) and the delete of an id change's old person
(on_id_change=delete_old; the new person was identified by the page). At the end of a run whose
users walk completed, `settle_deletions`:

1. ends every planned row whose setting is off now (`cancelled`): a delete without
   `on_segment_exit=delete` (`enable_user_deletion`), a suppress without `suppress`, a
   delete_old without `on_id_change=delete_old`;
2. checks each planned delete or suppress against Hull as it is now (current segments, current
   settings) and against state: a user back in a synchronized segment, gone from Hull's search,
   or no longer live under that Customer.io id is not removed (`cancelled`, with the reason);
   a delete_old is not sent when a live person of state holds the old id again;
3. counts what is left against `max_deletions_per_run` (cio_sync/rules/guard.py). Within the
   limit (all kinds together), every one is sent. Over it, nobody is: the people become a deletion plan awaiting
   approval (the flow publishes it and pauses or fails). A plan approved earlier is sent whole,
   whatever the limit; approval covers that plan's people only.

Sending uses the same pushers as the pages (v1 or v2 batch), then records state and writes back
(a delete_old changes no state: the user lives on under its new id).
A delete that failed transiently stays planned for the next run; a 400 ends it `failed`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cio_sync.pipeline.push import CustomerIoUnavailable, UserOutcome
from cio_sync.pipeline.summary import SyncSummary
from cio_sync.pipeline.sync_log import log_row, log_rows, run_id_or_local
from cio_sync.pipeline.users_page import LEFT_SEGMENTS, outcome_row, push_plans
from cio_sync.pipeline.writeback import write_back
from cio_sync.rules.guard import deletion_limit, plan_digest
from cio_sync.rules.mapping import MalformedUserError, map_user
from cio_sync.rules.plan import DELETE, DELETE_OLD, SKIP, SUPPRESS, UserPlan
from cio_sync.rules.sharding import WHOLE, Shard
from cio_sync.runtime import SyncRuntime
from cio_sync.store.db import utcnow
from cio_sync.store.deletions import (
    APPROVED,
    CANCELLED,
    FAILED,
    PLANNED,
    decide_plan,
    end_rows,
    mark_attempt,
    mark_sent,
    open_new_plan,
    planned,
)
from cio_sync.store.sync_log import write_log_rows
from cio_sync.store.users import (
    count_live_people,
    live_cio_id_holders,
    live_people,
    load_user_state,
    record_user_outcomes,
)

GUARD_REASON = f"sent by the deletion guard: {LEFT_SEGMENTS}"


@dataclass
class GuardResult:
    """What `settle_deletions` did; `plan` is set when people await approval."""

    limit: int = 0
    sent: list[str] = field(default_factory=list)  # Hull ids deleted in Customer.io
    suppressed: list[str] = field(default_factory=list)  # Hull ids deleted and suppressed
    old_deleted: list[str] = field(default_factory=list)  # Hull ids whose id change's old person was deleted
    failed: int = 0  # rejected by Customer.io (400): ended `failed`
    postponed: int = 0  # transient failures: still planned, the next run sends them
    cancelled: Counter = field(default_factory=Counter)  # reason → people not deleted after all
    approved_plan: int | None = None
    plan: dict[str, Any] | None = None  # the plan awaiting approval (id, digest, size, ...)
    plan_rows: list[dict[str, Any]] = field(default_factory=list)
    calls: Counter = field(default_factory=Counter)
    writeback_sent: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add_to(self, summary: SyncSummary) -> None:
        if self.sent:
            summary.deletions["sent"] += len(self.sent)
        if self.suppressed:
            summary.deletions["suppressed"] += len(self.suppressed)
        if self.old_deleted:
            summary.deletions["old ids deleted"] += len(self.old_deleted)
        if self.failed:
            summary.deletions["failed"] += self.failed
        if self.postponed:
            summary.deletions["postponed to the next run"] += self.postponed
        for reason, count in self.cancelled.items():
            summary.deletions[f"not deleted: {reason}"] += count
        if self.plan is not None:
            summary.deletions["awaiting approval"] += self.plan["size"]
        summary.calls.update(self.calls)
        summary.writeback_sent += self.writeback_sent
        for error in self.errors:
            summary.add_error(error)
        summary.warnings.extend(w for w in self.warnings if w not in summary.warnings)


def plan_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The artifact's rows: who would be deleted (or suppressed), and why."""
    return [
        {
            "Hull id": r["hull_id"],
            "Customer.io id": r["cio_id"],
            "email": r.get("email") or "",
            "action": r.get("action") or DELETE,
            "why": r["reason"],
        }
        for r in rows
    ]


def _setting_off(row: dict[str, Any], settings: Any) -> str | None:
    """Why a planned row may not be sent under the settings of now (None: it may)."""
    action = row.get("action") or DELETE
    if action == DELETE and not settings.enable_user_deletion:
        return "enable_user_deletion is off"
    if action == SUPPRESS and settings.segment_exit != "suppress":
        return "on_segment_exit is no longer suppress"
    if action == DELETE_OLD and settings.on_id_change != DELETE_OLD:
        return "on_id_change is no longer delete_old"
    return None


def settle_deletions(
    runtime: SyncRuntime,
    scope: str,
    flow_run_id: str | None,
    shard: Shard = WHOLE,
    approved_plan_id: int | None = None,
    decided_by: str = "",
) -> GuardResult:
    """Sends, holds for approval or ends this shard's planned deletes (see the module doc).
    Raises AuthError (Customer.io or Hull rejected the credentials) and ApiError (Hull could not
    be asked: nothing is sent, every delete stays planned)."""
    engine, settings = runtime.engine, runtime.settings
    result = GuardResult()
    rows = [r for r in planned(engine) if shard.owns(r["hull_id"])]
    if not rows:
        return result
    off = {r["id"]: why for r in rows if (why := _setting_off(r, settings)) is not None}
    if off:
        end_rows(engine, off, CANCELLED)
        result.cancelled.update(off.values())
        rows = [r for r in rows if r["id"] not in off]
        if not rows:
            return result
    rows = _still_leaving(runtime, [r for r in rows if r["action"] != DELETE_OLD], result, flow_run_id) + (
        _old_id_free(runtime, [r for r in rows if r["action"] == DELETE_OLD], result, flow_run_id)
    )
    result.limit = deletion_limit(settings.max_deletions_per_run, count_live_people(engine))
    approved = [r for r in rows if approved_plan_id is not None and r["plan_id"] == approved_plan_id]
    rest = [r for r in rows if approved_plan_id is None or r["plan_id"] != approved_plan_id]
    if approved_plan_id is not None:
        decide_plan(engine, approved_plan_id, APPROVED, decided_by)
        result.approved_plan = approved_plan_id
    to_send = list(approved)
    if len(rest) > result.limit:
        result.plan = open_new_plan(
            engine, scope, plan_digest((r["hull_id"], r["cio_id"]) for r in rest), [r["id"] for r in rest], flow_run_id
        )
        result.plan_rows = rest
    else:
        to_send += rest
    if to_send:
        _send(runtime, to_send, result, flow_run_id)
    return result


def _still_leaving(
    runtime: SyncRuntime, rows: list[dict[str, Any]], result: GuardResult, flow_run_id: str | None = None
) -> list[dict[str, Any]]:
    """The planned deletes and suppresses that still hold against Hull now and state now; ends the others."""
    if not rows:
        return []
    hull_ids = [r["hull_id"] for r in rows]
    docs = {d.get("id"): d for d in runtime.hull.users_by_ids(hull_ids) if isinstance(d, dict)}
    live = live_people(runtime.engine, hull_ids)
    keep, ended = [], {}
    for row in rows:
        reason = None
        doc = docs.get(row["hull_id"])
        if live.get(row["hull_id"]) != row["cio_id"]:
            reason = "no longer in Customer.io under that id"
        elif doc is None:
            reason = "not found in Hull when the delete was due"
        else:
            try:
                mapped = map_user(doc, runtime.settings, runtime.segment_names, runtime.whitelisted_segment_ids)
                if mapped.whitelisted_segment_ids:
                    reason = "back in a synchronized segment"
            except MalformedUserError:
                reason = "unreadable in Hull when the delete was due"
        if reason is None:
            keep.append(row)
        else:
            ended[row["id"]] = reason
            result.cancelled[reason] += 1
    _cancel(runtime, rows, ended, flow_run_id)
    return keep


def _old_id_free(
    runtime: SyncRuntime, rows: list[dict[str, Any]], result: GuardResult, flow_run_id: str | None = None
) -> list[dict[str, Any]]:
    """The planned deletes of old ids that no live person of state holds now; ends the others
    (the user's identify under the new id failed, or someone took the old id since)."""
    if not rows:
        return []
    holders = live_cio_id_holders(runtime.engine, [r["cio_id"] for r in rows])
    keep, ended = [], {}
    for row in rows:
        if row["cio_id"] in holders:
            reason = "the old id is held by a live person"
            ended[row["id"]] = reason
            result.cancelled[reason] += 1
        else:
            keep.append(row)
    _cancel(runtime, rows, ended, flow_run_id)
    return keep


def _cancel(runtime: SyncRuntime, rows: list[dict[str, Any]], ended: dict[int, str], flow_run_id: str | None) -> None:
    end_rows(runtime.engine, ended, CANCELLED)
    if ended:
        now, run_id = utcnow(), run_id_or_local(flow_run_id)
        row_by_id = {r["id"]: r for r in rows}
        log = [
            log_row(
                UserPlan(row_by_id[i]["hull_id"], SKIP, "", None, None, row_by_id[i]["cio_id"]),
                None,
                run_id,
                now,
                values=False,
                reason=f"planned {row_by_id[i]['action']} cancelled by the deletion guard: {why}",
            )
            for i, why in ended.items()
        ]
        with runtime.engine.begin() as connection:
            write_log_rows(connection, log)


def _send(
    runtime: SyncRuntime, rows: list[dict[str, Any]], result: GuardResult, flow_run_id: str | None = None
) -> None:
    settings = runtime.settings
    mappings = _mappings(runtime, rows)
    plans = [
        UserPlan(
            r["hull_id"],
            SUPPRESS if r["action"] == SUPPRESS else DELETE,
            "",
            None,
            None,
            r["cio_id"],
            target_mapping=mappings.get(r["id"]),
        )
        for r in rows
    ]
    row_of = {id(plan): row for plan, row in zip(plans, rows)}
    try:
        outcomes = push_plans(runtime, plans, result.calls)
    except CustomerIoUnavailable as stopped:
        outcomes = stopped.args[0]
    now = utcnow()
    done: list[UserOutcome] = [o for o in outcomes if o.ok]
    permanent = {row_of[id(o.plan)]["id"]: o.error or "" for o in outcomes if o.error_kind == "permanent"}
    retry = {row_of[id(o.plan)]["id"]: o.error or "" for o in outcomes if not o.ok and o.error_kind != "permanent"}
    # A delete_old changes no state: the user lives on under its new id.
    removed = [o for o in outcomes if row_of[id(o.plan)]["action"] != DELETE_OLD]
    with runtime.engine.begin() as connection:
        record_user_outcomes(connection, [outcome_row(o, now) for o in removed])
        for action in (DELETE, SUPPRESS, DELETE_OLD):
            of_action = [o for o in outcomes if row_of[id(o.plan)]["action"] == action]
            reason = GUARD_REASON if action == DELETE else f"{action} sent by the deletion guard"
            write_log_rows(
                connection,
                log_rows([], of_action, run_id_or_local(flow_run_id), now, values=False, reason=reason),
            )
        mark_sent(connection, [row_of[id(o.plan)]["id"] for o in done])
        mark_attempt(connection, permanent, FAILED)
        mark_attempt(connection, retry, PLANNED)
    for outcome in done:
        action = row_of[id(outcome.plan)]["action"]
        {DELETE: result.sent, SUPPRESS: result.suppressed, DELETE_OLD: result.old_deleted}[action].append(
            outcome.plan.hull_id
        )
    result.failed += len(permanent)
    result.postponed += len(retry)
    result.calls["delete"] += sum(o.delete_calls for o in outcomes)
    for outcome in outcomes:
        result.calls.update(outcome.calls)
        if not outcome.ok:
            action = row_of[id(outcome.plan)]["action"]
            result.errors.append(f"{action} of user {outcome.plan.hull_id}: {outcome.error}")
    written = [o.plan.hull_id for o in done if row_of[id(o.plan)]["action"] != DELETE_OLD]
    if written:
        sent, error = write_back(runtime.hull, runtime.engine, settings.user_id_mapping, hull_ids=written)
        result.writeback_sent += sent
        if error:  # the rows stay writeback_pending: the next run writes them back
            result.warnings.append(error)


def _mappings(runtime: SyncRuntime, rows: list[dict[str, Any]]) -> dict[int, str | None]:
    """Planned row id → the user_id_mapping its person was sent under (state's, when state still
    holds that person; otherwise the run's)."""
    state = load_user_state(runtime.engine, [r["hull_id"] for r in rows if r["action"] != DELETE_OLD])
    if state.empty or "cio_id_mapping" not in state:
        return {}
    held = {
        (h, c): m
        for h, c, m in zip(state["hull_id"], state["cio_id"], state["cio_id_mapping"])
        if isinstance(m, str) and m
    }
    return {r["id"]: held.get((r["hull_id"], r["cio_id"])) for r in rows if r["action"] != DELETE_OLD}
