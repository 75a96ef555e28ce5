"""Where each incremental stream (users, events, per shard) resumes: the `sync_cursor` table;
and per-installation values such as `events_start`: the `sync_meta` table."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import IntegrityError

from cio_sync.store.db import as_utc, sync_cursor, sync_meta, upsert, utcnow


@dataclass
class Cursor:
    """Resume point of an incremental stream: the last timestamp fully processed and the ids
    already handled at exactly that timestamp (many users can share one)."""

    position: str | None = None
    seen_ids: set[str] = field(default_factory=set)

    def advanced(self, items: list[dict[str, Any]], key: str, id_key: str) -> Cursor:
        if not items:
            return self
        last = max(item[key] for item in items)
        at_last = {item[id_key] for item in items if item[key] == last}
        seen = (self.seen_ids | at_last) if last == self.position else at_last
        return Cursor(position=last, seen_ids=seen)


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


@dataclass(frozen=True)
class StoredCursor:
    name: str
    position: str | None
    updated_at: datetime


def list_cursors(engine: Engine) -> list[StoredCursor]:
    """Every stored cursor (a handful of rows: one per stream and shard)."""
    with engine.connect() as connection:
        rows = connection.execute(select(sync_cursor.c.name, sync_cursor.c.position, sync_cursor.c.updated_at)).all()
    return [StoredCursor(r.name, r.position, as_utc(r.updated_at) or utcnow()) for r in rows]


def set_cursor_position(engine: Engine, name: str, position: str) -> None:
    """`cio-sync cursor set`: the stream resumes at `position` (forwards or back); the ids seen
    at the old position no longer apply."""
    with engine.begin() as connection:
        write_cursor(connection, name, Cursor(position=position))


def read_meta(engine: Engine, name: str) -> str | None:
    with engine.connect() as connection:
        return connection.execute(select(sync_meta.c.value).where(sync_meta.c.name == name)).scalar_one_or_none()


def keep_meta(engine: Engine, name: str, value: str) -> str:
    """Stores `value` under `name` unless a value is there already; returns the stored one
    (runs starting together agree on the first writer's value)."""
    try:
        with engine.begin() as connection:
            connection.execute(insert(sync_meta).values(name=name, value=value, updated_at=utcnow()))
        return value
    except IntegrityError:
        stored = read_meta(engine, name)
        assert stored is not None
        return stored
