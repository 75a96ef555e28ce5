"""Reads and writes of the sync state tables (user_state, sync_cursor). SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import pandas as pd
from sqlalchemy import Connection, Engine, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from cio_sync.db import as_utc, sync_cursor, user_state, utcnow


@dataclass
class Cursor:
    """Resume point of an incremental stream: the last timestamp fully processed and the ids
    already handled at exactly that timestamp (many users can share one)."""

    position: str | None = None
    seen_ids: set[str] = field(default_factory=set)

    def advanced(self, items: list[dict[str, Any]], key: str, id_key: str) -> "Cursor":
        if not items:
            return self
        last = max(item[key] for item in items)
        at_last = {item[id_key] for item in items if item[key] == last}
        seen = (self.seen_ids | at_last) if last == self.position else at_last
        return Cursor(position=last, seen_ids=seen)


def _insert(connection: Connection):
    return postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert


def upsert(connection: Connection, table, rows: list[dict[str, Any]], key: str) -> None:
    if not rows:
        return
    statement = _insert(connection)(table)
    columns = {c for row in rows for c in row} - {key}
    # Rows with different column sets are grouped so one statement fits each group.
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    for names, group in groups.items():
        stmt = statement.on_conflict_do_update(
            index_elements=[key], set_={c: statement.excluded[c] for c in names if c != key and c in columns}
        )
        # executemany of one cached statement: a multi-VALUES statement of a whole page was
        # compiled anew for every page (~0.1 s a page of 500 rows).
        connection.execute(stmt, group)


def read_cursor(engine: Engine, name: str) -> Cursor:
    with engine.connect() as connection:
        row = connection.execute(select(sync_cursor).where(sync_cursor.c.name == name)).first()
    if row is None:
        return Cursor()
    return Cursor(position=row.position, seen_ids=set(row.seen_ids or []))


def write_cursor(connection: Connection, name: str, cursor: Cursor) -> None:
    upsert(
        connection,
        sync_cursor,
        [{"name": name, "position": cursor.position, "seen_ids": sorted(cursor.seen_ids), "updated_at": utcnow()}],
        "name",
    )


STATE_FRAME_COLUMNS = ["hull_id", "cio_id", "attributes_hash", "created_at", "deleted_at"]


def load_user_state(engine: Engine, hull_ids: Iterable[str]) -> pd.DataFrame:
    """State rows of one page of users (never the whole table)."""
    ids = list(hull_ids)
    rows: list[Any] = []
    with engine.connect() as connection:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows.extend(
                connection.execute(
                    select(*(user_state.c[c] for c in STATE_FRAME_COLUMNS)).where(user_state.c.hull_id.in_(chunk))
                ).all()
            )
    return pd.DataFrame([tuple(r) for r in rows], columns=STATE_FRAME_COLUMNS)


def record_user_outcomes(connection: Connection, rows: list[dict[str, Any]]) -> None:
    now = utcnow()
    for row in rows:
        row.setdefault("updated_at", now)
    upsert(connection, user_state, rows, "hull_id")


def pending_writebacks(engine: Engine, limit: int, hull_ids: list[str] | None = None) -> list[dict[str, Any]]:
    query = select(user_state).where(user_state.c.writeback_pending.is_(True))
    if hull_ids is not None:
        query = query.where(user_state.c.hull_id.in_(hull_ids))
    with engine.connect() as connection:
        rows = connection.execute(query.order_by(user_state.c.hull_id).limit(limit)).mappings().all()
    return [
        {**row, "created_at": as_utc(row["created_at"]), "synced_at": as_utc(row["synced_at"]),
         "deleted_at": as_utc(row["deleted_at"])}
        for row in rows
    ]


def clear_writeback_pending(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """Clears the flag only where the row was not synced again since it was read."""
    if not rows:
        return
    statement = (
        update(user_state)
        .where(user_state.c.hull_id == bindparam("row_hull_id"))
        .where(user_state.c.updated_at == bindparam("row_updated_at"))
        .values(writeback_pending=False)
    )
    with engine.begin() as connection:
        # One executemany instead of one statement (compiled and sent) per row.
        connection.execute(
            statement, [{"row_hull_id": r["hull_id"], "row_updated_at": r["updated_at"]} for r in rows]
        )


def count_pending_writebacks(engine: Engine) -> int:
    from sqlalchemy import func

    with engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(user_state).where(user_state.c.writeback_pending.is_(True))
        ).scalar_one()
