"""Reads and writes of `sync_log`: what was decided and done for one person in one run.

Rows are written in the same transaction as the state rows of their page (one executemany);
the write-back of a person marks its pending rows `sent`; runs prune rows older than the
retention in bounded deletes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, desc, func, insert, or_, select, update

from cio_sync.store.db import as_utc, planned_deletions, sync_log, user_state, utcnow

PENDING, SENT = "pending", "sent"
PRUNE_BATCH = 5_000  # rows per DELETE statement
PRUNE_STATEMENTS = 4  # statements per run: a backlog is worked off over several runs


def email_hash(email: str | None) -> str | None:
    """How an email is kept in the log: found by `cio-sync explain`, never readable."""
    if not email:
        return None
    return hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()


def write_log_rows(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """One executemany for the rows of a page (every row carries every column)."""
    if not rows:
        return
    now = utcnow()
    full = [
        {
            "run_id": r["run_id"],
            "logged_at": r.get("logged_at") or now,
            "hull_id": r["hull_id"],
            "cio_id": r.get("cio_id"),
            "email_hash": r.get("email_hash"),
            "decision": r["decision"],
            "reason": r.get("reason"),
            "changed": r.get("changed"),
            "attribute_values": r.get("attribute_values"),
            "calls": r.get("calls"),
            "error": r.get("error"),
            "writeback": r.get("writeback"),
            "writeback_at": None,
            "writeback_error": None,
        }
        for r in rows
    ]
    connection.execute(insert(sync_log), full)


def mark_written_back(engine: Engine, hull_ids: list[str], error: str | None = None) -> None:
    """The write-back of these people was accepted by Hull (`error` None) or postponed:
    their pending rows say so. One statement per 500 people."""
    if not hull_ids:
        return
    values: dict[str, Any] = (
        {"writeback": SENT, "writeback_at": utcnow(), "writeback_error": None}
        if error is None
        else {"writeback_error": error[:1000]}
    )
    with engine.begin() as connection:
        for start in range(0, len(hull_ids), 500):
            connection.execute(
                update(sync_log)
                .where(sync_log.c.hull_id.in_(hull_ids[start : start + 500]))
                .where(sync_log.c.writeback == PENDING)
                .values(**values)
            )


def prune_sync_log(
    engine: Engine,
    retention_days: float,
    now: datetime | None = None,
    batch: int = PRUNE_BATCH,
    statements: int = PRUNE_STATEMENTS,
) -> int:
    """Deletes rows older than the retention, at most `batch` rows per statement and
    `statements` statements (each its own short transaction); returns how many went."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    removed = 0
    for _ in range(statements):
        oldest = select(sync_log.c.id).where(sync_log.c.logged_at < cutoff).order_by(sync_log.c.id).limit(batch)
        with engine.begin() as connection:
            ids = list(connection.execute(oldest).scalars())
            if not ids:
                break
            connection.execute(delete(sync_log).where(sync_log.c.id.in_(ids)))
        removed += len(ids)
        if len(ids) < batch:
            break
    return removed


def recent_rows(engine: Engine, hull_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """The person's latest rows, newest first."""
    with engine.connect() as connection:
        rows = (
            connection.execute(
                select(sync_log)
                .where(sync_log.c.hull_id == hull_id)
                .order_by(desc(sync_log.c.logged_at), desc(sync_log.c.id))
                .limit(limit)
            )
            .mappings()
            .all()
        )
    return [{**r, "logged_at": as_utc(r["logged_at"]), "writeback_at": as_utc(r["writeback_at"])} for r in rows]


def count_rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(sync_log)).scalar_one()


def find_people(engine: Engine, query: str) -> dict[str, str | None]:
    """Hull id → Customer.io id of everyone `query` names: a Hull id, a Customer.io id, or an
    email (matched on the log's email hashes and the deletion plans' emails)."""
    found: dict[str, str | None] = {}
    hashed = email_hash(query) if "@" in query else None
    with engine.connect() as connection:
        for hull_id, cio_id in connection.execute(
            select(user_state.c.hull_id, user_state.c.cio_id).where(
                or_(user_state.c.hull_id == query, user_state.c.cio_id == query)
            )
        ):
            found[hull_id] = cio_id
        conditions = [sync_log.c.hull_id == query, sync_log.c.cio_id == query]
        if hashed is not None:
            conditions.append(sync_log.c.email_hash == hashed)
        for hull_id, cio_id in connection.execute(
            select(sync_log.c.hull_id, sync_log.c.cio_id).where(or_(*conditions)).order_by(sync_log.c.id)
        ):
            found[hull_id] = found.get(hull_id) or cio_id
        if hashed is not None:
            for hull_id, cio_id in connection.execute(
                select(planned_deletions.c.hull_id, planned_deletions.c.cio_id).where(
                    func.lower(planned_deletions.c.email) == query.strip().lower()
                )
            ):
                found[hull_id] = found.get(hull_id) or cio_id
    return found


def state_row(engine: Engine, hull_id: str) -> dict[str, Any] | None:
    with engine.connect() as connection:
        row = connection.execute(select(user_state).where(user_state.c.hull_id == hull_id)).mappings().first()
    if row is None:
        return None
    return {k: (as_utc(v) if isinstance(v, datetime) else v) for k, v in row.items()}


def latest_logged_values(engine: Engine, hull_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per person, the last value logged for each attribute (rows written with
    `sync_log_values` on, within the retention): the dry run's "old" values."""
    ids = list(hull_ids)
    values: dict[str, dict[str, Any]] = {}
    if not ids:
        return values
    with engine.connect() as connection:
        rows = connection.execute(
            select(sync_log.c.hull_id, sync_log.c.attribute_values)
            .where(sync_log.c.hull_id.in_(bindparam("ids", expanding=True)))
            .where(sync_log.c.attribute_values.is_not(None))
            .order_by(sync_log.c.id),
            {"ids": ids},
        ).all()
    for hull_id, logged in rows:
        if isinstance(logged, dict):
            values.setdefault(hull_id, {}).update(logged)
    return values
