"""The failed-batch store: work that outlived its retry budget, kept until a rerun completes it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update

from cio_sync.store.db import as_utc, failed_batches, utcnow

OPEN, RESOLVED = "open", "resolved"
USERS, EVENTS = "users", "events"


def record_failed_batch(
    connection: Connection, kind: str, payload: dict[str, Any], error: str, flow_run_id: str | None
) -> int:
    now = utcnow()
    batch_id: int = connection.execute(
        insert(failed_batches).values(
            kind=kind,
            payload=payload,
            error=error,
            attempts=1,
            flow_run_id=flow_run_id,
            status=OPEN,
            created_at=now,
            updated_at=now,
        )
    ).inserted_primary_key[0]  # type: ignore[index]
    return batch_id


def add_to_failed_batch(connection: Connection, batch_id: int, ids_key: str, ids: list[str]) -> None:
    """Appends `ids` (those not already there) to an open batch's `payload[ids_key]`: one
    phase of one run keeps one batch however many of its pages leave work unsent."""
    payload = connection.execute(
        select(failed_batches.c.payload).where(failed_batches.c.id == batch_id).with_for_update()
    ).scalar_one()
    payload = dict(payload or {})
    existing = list(payload.get(ids_key) or [])
    known = set(existing)
    payload[ids_key] = existing + [i for i in dict.fromkeys(ids) if i not in known]
    connection.execute(
        update(failed_batches).where(failed_batches.c.id == batch_id).values(payload=payload, updated_at=utcnow())
    )


def list_failed_batches(
    engine: Engine, status: str | None = OPEN, ids: list[int] | None = None
) -> list[dict[str, Any]]:
    query = select(failed_batches).order_by(failed_batches.c.id)
    if status:
        query = query.where(failed_batches.c.status == status)
    if ids:
        query = query.where(failed_batches.c.id.in_(ids))
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [{**r, "created_at": as_utc(r["created_at"]), "updated_at": as_utc(r["updated_at"])} for r in rows]


def mark_rerun(engine: Engine, batch_id: int, resolved: bool, error: str | None, transient: bool | None = None) -> None:
    """A rerun either completes the batch or counts one more attempt with its latest error
    (and whether that error was transient: only transient batches are retried automatically)."""
    values: dict[str, Any] = {"updated_at": utcnow(), "attempts": failed_batches.c.attempts + 1}
    if resolved:
        values["status"] = RESOLVED
    if error:
        values["error"] = error
    if transient is not None and not resolved:
        values["transient"] = transient
    with engine.begin() as connection:
        connection.execute(update(failed_batches).where(failed_batches.c.id == batch_id).values(**values))


def open_work_batches(engine: Engine) -> list[dict[str, Any]]:
    """Open users and events batches, oldest first (the automatic retry picks among them)."""
    return [b for b in list_failed_batches(engine) if b["kind"] in (USERS, EVENTS)]


def describe(batch: dict[str, Any]) -> str:
    payload = batch["payload"] or {}
    size = len(payload.get("hull_ids") or payload.get("hull_event_ids") or [])
    return (
        f"#{batch['id']:<5} {batch['kind']:<7} {size:>5} items  {batch['status']:<8} attempts={batch['attempts']}"
        f"{'' if batch.get('transient', True) else ' (permanent error)'}  "
        f"{batch['created_at']:%Y-%m-%d %H:%M}  run={batch['flow_run_id'] or '-'}\n        {batch['error']}"
    )


def open_batches_age(engine: Engine) -> tuple[int, datetime | None]:
    """How many batches are open, and when the oldest of them was saved (for the alert on
    failed work left open)."""
    with engine.connect() as connection:
        count, oldest = connection.execute(
            select(func.count(), func.min(failed_batches.c.created_at)).where(failed_batches.c.status == OPEN)
        ).one()
    return int(count), as_utc(oldest)
