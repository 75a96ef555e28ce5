"""Planned deletions and deletion plans: the deletion guard's tables (cio_sync/pipeline/deletions.py).

A users page never sends a delete, a suppress or the delete of an id change's old person: it records a `planned` row in the same transaction as the
page's state and cursor, so a crash loses no decision. The guard at the end of the run sends
planned rows (`sent`/`failed`), leaves them planned (a transient failure, a plan awaiting
approval), or ends them (`cancelled` with the reason, `rejected` by an approver). A plan
groups the rows published for approval; approving it covers exactly its rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Engine, and_, insert, select, update

from cio_sync.store.db import as_utc, deletion_plans, planned_deletions, utcnow

PLANNED, SENT, FAILED, CANCELLED, REJECTED = "planned", "sent", "failed", "cancelled", "rejected"
OPEN, APPROVED, SUPERSEDED = "open", "approved", "superseded"
# What a planned row removes: the person (delete), the person suppressed (suppress), or the old
# person of an id change (delete_old, while the user lives on under its new id).
DELETE, SUPPRESS, DELETE_OLD = "delete", "suppress", "delete_old"
LEAVING = (DELETE, SUPPRESS)


def _key(hull_id: str, action: str, cio_id: str) -> tuple[str, str, str]:
    """A user has at most one planned delete or suppress (it leaves once), and one planned
    delete_old per old id (ids changed twice leave two old persons)."""
    return (hull_id, DELETE_OLD, cio_id) if action == DELETE_OLD else (hull_id, DELETE, "")


def plan_deletions(connection: Connection, rows: list[dict[str, Any]], flow_run_id: str | None) -> None:
    """`rows`: hull_id, cio_id, email, reason, and `action` (delete by default). A user already
    planned (`_key`) keeps its row (and its place in a plan awaiting approval) unless the person
    to remove or the action changed."""
    if not rows:
        return
    now = utcnow()
    existing = {
        _key(r.hull_id, r.action, r.cio_id): r
        for r in connection.execute(
            select(
                planned_deletions.c.id,
                planned_deletions.c.hull_id,
                planned_deletions.c.cio_id,
                planned_deletions.c.action,
            )
            .where(planned_deletions.c.hull_id.in_([r["hull_id"] for r in rows]))
            .where(planned_deletions.c.status == PLANNED)
        )
    }
    new = []
    for row in rows:
        action = row.get("action") or DELETE
        old = existing.get(_key(row["hull_id"], action, row["cio_id"]))
        if old is None:
            new.append(
                {
                    **row,
                    "action": action,
                    "status": PLANNED,
                    "flow_run_id": flow_run_id,
                    "attempts": 0,
                    "planned_at": now,
                    "updated_at": now,
                }
            )
        elif old.cio_id != row["cio_id"] or old.action != action:
            connection.execute(
                update(planned_deletions)
                .where(planned_deletions.c.id == old.id)
                .values(
                    action=action,
                    cio_id=row["cio_id"],
                    email=row.get("email"),
                    reason=row["reason"],
                    plan_id=None,
                    flow_run_id=flow_run_id,
                    updated_at=now,
                )
            )
    if new:
        connection.execute(insert(planned_deletions), new)


def cancel_for_users(connection: Connection, hull_ids: Iterable[str], reason: str) -> int:
    """Users decided again without leaving (back in a segment, ...): their planned delete or
    suppress ends (a planned delete_old of an earlier id change stays: the settle checks it)."""
    ids = list(hull_ids)
    if not ids:
        return 0
    return connection.execute(
        update(planned_deletions)
        .where(planned_deletions.c.hull_id.in_(ids))
        .where(planned_deletions.c.status == PLANNED)
        .where(planned_deletions.c.action.in_(LEAVING))
        .values(status=CANCELLED, last_error=reason, updated_at=utcnow())
    ).rowcount


def planned(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = (
            connection.execute(
                select(planned_deletions).where(planned_deletions.c.status == PLANNED).order_by(planned_deletions.c.id)
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


def end_rows(engine: Engine, ids_and_reasons: dict[int, str], status: str) -> None:
    """Ends planned rows with `status` (cancelled, rejected, failed) and the reason of each."""
    if not ids_and_reasons:
        return
    now = utcnow()
    with engine.begin() as connection:
        for row_id, reason in ids_and_reasons.items():
            connection.execute(
                update(planned_deletions)
                .where(and_(planned_deletions.c.id == row_id, planned_deletions.c.status == PLANNED))
                .values(status=status, last_error=reason, updated_at=now)
            )


def mark_sent(connection: Connection, ids: list[int]) -> None:
    if ids:
        connection.execute(
            update(planned_deletions)
            .where(planned_deletions.c.id.in_(ids))
            .values(status=SENT, last_error=None, attempts=planned_deletions.c.attempts + 1, updated_at=utcnow())
        )


def mark_attempt(connection: Connection, ids_and_errors: dict[int, str], status: str = PLANNED) -> None:
    """A failed send: `failed` for good (permanent), or still `planned` for the next run."""
    now = utcnow()
    for row_id, error in ids_and_errors.items():
        connection.execute(
            update(planned_deletions)
            .where(planned_deletions.c.id == row_id)
            .values(status=status, last_error=error, attempts=planned_deletions.c.attempts + 1, updated_at=now)
        )


def open_plan(engine: Engine, scope: str) -> dict[str, Any] | None:
    with engine.connect() as connection:
        row = (
            connection.execute(
                select(deletion_plans)
                .where(deletion_plans.c.scope == scope)
                .where(deletion_plans.c.status == OPEN)
                .order_by(deletion_plans.c.id.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
    return _plan(row)


def get_plan(engine: Engine, plan_id: int) -> dict[str, Any] | None:
    with engine.connect() as connection:
        row = connection.execute(select(deletion_plans).where(deletion_plans.c.id == plan_id)).mappings().first()
    return _plan(row)


def open_new_plan(
    engine: Engine, scope: str, digest: str, row_ids: list[int], flow_run_id: str | None
) -> dict[str, Any]:
    """The plan of `row_ids`, awaiting approval. An open plan of the same scope with the same
    digest (the same people) is kept as it is; any other open plan of the scope is superseded."""
    now = utcnow()
    with engine.begin() as connection:
        current = (
            connection.execute(
                select(deletion_plans).where(deletion_plans.c.scope == scope).where(deletion_plans.c.status == OPEN)
            )
            .mappings()
            .all()
        )
        for plan in current:
            if plan["digest"] == digest:
                return _plan(plan) or {}
        if current:
            connection.execute(
                update(deletion_plans)
                .where(deletion_plans.c.id.in_([p["id"] for p in current]))
                .values(status=SUPERSEDED, decided_at=now, decided_by="a newer plan")
            )
        plan_id = connection.execute(
            insert(deletion_plans).values(
                scope=scope,
                digest=digest,
                size=len(row_ids),
                status=OPEN,
                flow_run_id=flow_run_id,
                created_at=now,
            )
        ).inserted_primary_key[0]  # type: ignore[index]
        for start in range(0, len(row_ids), 500):
            connection.execute(
                update(planned_deletions)
                .where(planned_deletions.c.id.in_(row_ids[start : start + 500]))
                .values(plan_id=plan_id)
            )
        row = connection.execute(select(deletion_plans).where(deletion_plans.c.id == plan_id)).mappings().one()
    return _plan(row) or {}


def decide_plan(engine: Engine, plan_id: int, status: str, decided_by: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            update(deletion_plans)
            .where(deletion_plans.c.id == plan_id)
            .values(status=status, decided_at=utcnow(), decided_by=decided_by[:255])
        )


def _plan(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    return {**row, "created_at": as_utc(row["created_at"]), "decided_at": as_utc(row["decided_at"])}


def reject_plan(engine: Engine, plan_id: int, decided_by: str) -> int:
    """An approver said no: the plan's people are kept; their rows end `rejected` (they are
    planned again only when the users phase decides to delete them again)."""
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(
            update(deletion_plans)
            .where(deletion_plans.c.id == plan_id)
            .values(status=REJECTED, decided_at=now, decided_by=decided_by[:255])
        )
        return connection.execute(
            update(planned_deletions)
            .where(planned_deletions.c.plan_id == plan_id)
            .where(planned_deletions.c.status == PLANNED)
            .values(status=REJECTED, last_error=f"plan #{plan_id} rejected by {decided_by}"[:1000], updated_at=now)
        ).rowcount
