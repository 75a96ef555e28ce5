"""The sync log's rows and the dry run's plan: what a page decided and did, per person.

A row is logged for every person whose decision is anything but the `unchanged` skip: the
decision and reason, the names of the attributes that changed (their values only with
`sync_log_values` on), each Customer.io call with its status and Customer.io's message, and
`writeback: pending` when Hull is to be told (the write-back marks it `sent`,
cio_sync/store/sync_log.py). The rows are written by the users page in the transaction of its
state rows (cio_sync/pipeline/users_page.py) and by the deletion guard.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from typing import Any

from cio_sync.pipeline.push import UserOutcome
from cio_sync.rules.changes import Change, value_digest
from cio_sync.rules.mapping import REMOVED
from cio_sync.rules.plan import DELETE, SKIP, UserPlan
from cio_sync.store.sync_log import PENDING, email_hash

UNCHANGED = "unchanged"
PLANNED_DELETE = "planned: the deletion guard sends it at the end of the run"
PLAN_SAMPLE_SIZE = 50  # people in a dry run's plan artifact

_LOCAL_RUN_ID = f"local-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def run_id_or_local(flow_run_id: str | None) -> str:
    """The Prefect flow run id, or one id for everything this process runs outside a flow run."""
    return flow_run_id or _LOCAL_RUN_ID


def logged(plan: UserPlan) -> bool:
    return not (plan.action == SKIP and plan.reason == UNCHANGED)


def log_rows(
    plans: list[UserPlan],
    outcomes: list[UserOutcome],
    run_id: str,
    now: datetime,
    values: bool,
    reason: str | None = None,
) -> list[dict[str, Any]]:
    """One row per person of `plans` (decided) or `outcomes` (pushed) worth logging; an outcome
    wins over the plan of the same person. `reason` replaces the plans' reason (the guard's)."""
    by_person = {o.plan.hull_id: o for o in outcomes}
    rows = []
    seen: set[str] = set()
    for plan in [*plans, *(o.plan for o in outcomes)]:
        if plan.hull_id in seen or not logged(plan):
            continue
        seen.add(plan.hull_id)
        rows.append(log_row(plan, by_person.get(plan.hull_id), run_id, now, values, reason))
    return rows


def log_row(
    plan: UserPlan, outcome: UserOutcome | None, run_id: str, now: datetime, values: bool, reason: str | None = None
) -> dict[str, Any]:
    changes = plan.changes()
    row: dict[str, Any] = {
        "run_id": run_id,
        "logged_at": now,
        "hull_id": plan.hull_id,
        "cio_id": plan.target_id,
        "email_hash": email_hash(plan.mapped.email) if plan.mapped is not None else None,
        "decision": plan.action,
        "reason": reason or plan.reason or None,
        "changed": [c.name for c in changes] or None,
        "attribute_values": new_values(plan, changes) if values and changes else None,
        "calls": None,
        "error": None,
        "writeback": None,
    }
    if plan.previous_id is not None and plan.id_change is not None:
        row["reason"] = f"{row['reason'] or ''}; id changed from {plan.previous_id!r} ({plan.id_change})".lstrip("; ")
    if outcome is None:
        if plan.action == DELETE and reason is None:
            row["reason"] = PLANNED_DELETE
        return row
    row["calls"] = list(outcome.log) or None
    if outcome.ok:
        row["writeback"] = PENDING
    else:
        row["error"] = f"{outcome.error_kind}: {outcome.error}"
    return row


def new_values(plan: UserPlan, changes: list[Change]) -> dict[str, Any]:
    attributes = plan.mapped.attributes if plan.mapped is not None else {}
    return {c.name: attributes.get(c.name, REMOVED) for c in changes}


# ----- the dry run's plan --------------------------------------------------------------------


def plan_sample(
    plans: list[UserPlan], room: int, values: bool, old_values: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Up to `room` people this page would change: per person the decision and, per changed
    attribute, old → new (digests unless `values`; an old value only when the sync log kept
    it, `old_values`)."""
    sample: list[dict[str, Any]] = []
    for plan in plans:
        if len(sample) >= room:
            break
        if plan.action == SKIP:
            continue
        logged_values = (old_values or {}).get(plan.hull_id, {})
        entry: dict[str, Any] = {
            "hull_id": plan.hull_id,
            "cio_id": plan.target_id,
            "action": plan.action,
            "reason": plan.reason,
            "changes": [],
        }
        if plan.previous_id is not None and plan.id_change is not None:
            entry["id_change"] = f"{plan.previous_id} → {plan.target_id} ({plan.id_change})"
        attributes = plan.mapped.attributes if plan.mapped is not None else {}
        for change in plan.changes():
            entry["changes"].append(
                {
                    "name": change.name,
                    "old": _old(change, logged_values, values),
                    "new": _new(change, attributes, values),
                }
            )
        sample.append(entry)
    return sample


def _old(change: Change, logged: dict[str, Any], values: bool) -> str:
    if not change.known:
        return "(was: unknown — state keeps no digest for it)"
    if change.old is None:
        return "(none)"
    if values and change.name in logged and value_digest(logged[change.name]) == change.old:
        return repr(logged[change.name])
    return f"sha256:{change.old}"


def _new(change: Change, attributes: dict[str, Any], values: bool) -> str:
    if change.new is None:
        return "(removed)"
    return repr(attributes.get(change.name)) if values else f"sha256:{change.new}"


def plan_markdown(sample: list[dict[str, Any]], decisions: dict[str, int], values: bool) -> str:
    """The dry run's `sync-users-plan` artifact."""
    changing = sum(n for action, n in decisions.items() if action != SKIP)
    lines = [
        "# Dry run: what sync-users would change",
        "",
        f"{changing} people would change; {len(sample)} of them below"
        + ("" if values else " (values as short SHA-256 digests: `sync_log_values` is off)")
        + ".",
        "",
    ]
    for entry in sample:
        lines.append(f"## {entry['action']}: Hull user `{entry['hull_id']}` → Customer.io `{entry['cio_id']}`")
        if entry.get("id_change"):
            lines.append(f"- id change: {entry['id_change']}")
        if entry["action"] == DELETE:
            lines.append("- the person would be deleted (left every synchronized segment)")
        if entry["changes"]:
            lines += ["", "| attribute | old | new |", "|---|---|---|"]
            lines += [f"| `{c['name']}` | {_cell(c['old'])} | {_cell(c['new'])} |" for c in entry["changes"]]
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
