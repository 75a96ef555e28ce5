"""Where each incremental stream (users, events, per shard) resumes: the `sync_cursor` table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, select

from cio_sync.store.db import sync_cursor, upsert, utcnow


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
