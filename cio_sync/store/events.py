"""Reads of `event_state`: which Hull events were already decided, and whose they are."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, desc, select

from cio_sync.store.db import as_utc, event_state

# A stream or a backfill treats every recorded event as decided: sent, skipped, or failed
# (a 400 is not retried; a transient failure is in a failed batch, which retries it).
DECIDED = ("sent", "skipped", "failed")
# A rerun of a failed batch redoes its failed events.
DONE = ("sent", "skipped")


def decided_event_ids(engine: Engine, hull_event_ids: Iterable[str], statuses: tuple[str, ...] = DECIDED) -> set[str]:
    ids = list(hull_event_ids)
    found: set[str] = set()
    with engine.connect() as connection:
        for start in range(0, len(ids), 500):
            found.update(
                connection.execute(
                    select(event_state.c.hull_event_id)
                    .where(event_state.c.hull_event_id.in_(ids[start : start + 500]))
                    .where(event_state.c.status.in_(statuses))
                ).scalars()
            )
    return found


def event_user_ids(engine: Engine, hull_event_ids: Iterable[str]) -> dict[str, str | None]:
    """Hull user id of each recorded event (None for an event without a user)."""
    ids = list(hull_event_ids)
    found: dict[str, str | None] = {}
    with engine.connect() as connection:
        for start in range(0, len(ids), 500):
            found.update(
                connection.execute(
                    select(event_state.c.hull_event_id, event_state.c.hull_user_id).where(
                        event_state.c.hull_event_id.in_(ids[start : start + 500])
                    )
                )
                .tuples()
                .all()
            )
    return found


def events_of_user(engine: Engine, hull_user_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """The user's latest recorded events (sent, skipped with reason, failed), newest first."""
    with engine.connect() as connection:
        rows = (
            connection.execute(
                select(event_state)
                .where(event_state.c.hull_user_id == hull_user_id)
                .order_by(desc(event_state.c.updated_at), event_state.c.hull_event_id)
                .limit(limit)
            )
            .mappings()
            .all()
        )
    return [{**r, "updated_at": as_utc(r["updated_at"])} for r in rows]
