"""Reads and writes of `user_state`: one row per Hull user the sync decided about."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, Text, and_, bindparam, cast, func, select, update

from cio_sync.store.db import as_utc, upsert, user_state, utcnow

# A person is live in Customer.io when this connector created it and has not deleted it since.
LIVE = and_(user_state.c.created_at.is_not(None), user_state.c.deleted_at.is_(None))

STATE_FRAME_COLUMNS = [
    "hull_id",
    "cio_id",
    "attributes_hash",
    "created_at",
    "deleted_at",
    "segment_ids",
    "cio_id_mapping",
    "attribute_names",
    "suppressed_at",
    "rejected_hash",
    "attribute_digests",
    "source_digest",
]


# Read as their JSON text: only an update needs them, and most users read are unchanged.
# The diff decodes them when it needs them (cio_sync/rules/plan.py).
JSON_TEXT_COLUMNS = ("attribute_names", "attribute_digests")


def load_user_state(engine: Engine, hull_ids: Iterable[str]) -> pd.DataFrame:
    """State rows of one page of users (never the whole table). Every column holds plain
    Python values (`object`: pandas does not convert the datetimes, which a page reads back
    one by one); the JSON_TEXT_COLUMNS hold JSON text."""
    ids = list(hull_ids)
    rows: list[Any] = []
    columns = [
        cast(user_state.c[c], Text).label(c) if c in JSON_TEXT_COLUMNS else user_state.c[c] for c in STATE_FRAME_COLUMNS
    ]
    with engine.connect() as connection:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows.extend(connection.execute(select(*columns).where(user_state.c.hull_id.in_(chunk))).all())
    return pd.DataFrame([tuple(r) for r in rows], columns=STATE_FRAME_COLUMNS, dtype=object)


def record_user_outcomes(connection: Connection, rows: list[dict[str, Any]]) -> None:
    now = utcnow()
    for row in rows:
        row.setdefault("updated_at", now)
    upsert(connection, user_state, rows, "hull_id")


def reseal_unchanged(connection: Connection, rows: list[tuple[str, str, str]]) -> None:
    """(hull id, attributes hash, source digest) of users the diff mapped and found unchanged:
    their digest is written, only where the hash is still that one (`updated_at` is left
    alone: nothing was synced)."""
    if not rows:
        return
    statement = (
        update(user_state)
        .where(user_state.c.hull_id == bindparam("row_hull_id"))
        .where(user_state.c.attributes_hash == bindparam("row_hash"))
        .values(source_digest=bindparam("row_seal"))
    )
    connection.execute(statement, [{"row_hull_id": h, "row_hash": a, "row_seal": s} for h, a, s in rows])


# What a write-back reads of a row (cio_sync/pipeline/writeback.py), and what clears its flag.
WRITEBACK_COLUMNS = ("hull_id", "cio_id", "created_at", "synced_at", "deleted_at", "updated_at")


def pending_writebacks(engine: Engine, limit: int, hull_ids: list[str] | None = None) -> list[dict[str, Any]]:
    # Only the columns written back: the JSON columns cost three decodes a row for nothing.
    query = select(*(user_state.c[name] for name in WRITEBACK_COLUMNS)).where(user_state.c.writeback_pending.is_(True))
    if hull_ids is not None:
        query = query.where(user_state.c.hull_id.in_(hull_ids))
    with engine.connect() as connection:
        rows = connection.execute(query.order_by(user_state.c.hull_id).limit(limit)).mappings().all()
    return [
        {
            **row,
            "created_at": as_utc(row["created_at"]),
            "synced_at": as_utc(row["synced_at"]),
            "deleted_at": as_utc(row["deleted_at"]),
        }
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
        connection.execute(statement, [{"row_hull_id": r["hull_id"], "row_updated_at": r["updated_at"]} for r in rows])


def count_pending_writebacks(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(user_state).where(user_state.c.writeback_pending.is_(True))
        ).scalar_one()


def live_cio_id_holders(engine: Engine, cio_ids: Iterable[str]) -> dict[str, str]:
    """Customer.io id → the Hull user whose live person (created, not deleted) holds it."""
    ids = sorted(set(cio_ids))
    holders: dict[str, str] = {}
    with engine.connect() as connection:
        for start in range(0, len(ids), 500):
            rows = connection.execute(
                select(user_state.c.cio_id, user_state.c.hull_id)
                .where(user_state.c.cio_id.in_(ids[start : start + 500]))
                .where(LIVE)
                .order_by(user_state.c.created_at, user_state.c.hull_id)
            ).all()
            for cio_id, hull_id in rows:
                holders.setdefault(cio_id, hull_id)  # the earliest created keeps it
    return holders


def count_live_people(engine: Engine) -> int:
    """People state says exist in Customer.io (created, not deleted)."""
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(user_state).where(LIVE)).scalar_one()


def live_people(engine: Engine, hull_ids: list[str]) -> dict[str, str]:
    """Hull id → Customer.io id, for those of `hull_ids` whose person is live in state."""
    found: dict[str, str] = {}
    with engine.connect() as connection:
        for start in range(0, len(hull_ids), 500):
            rows = connection.execute(
                select(user_state.c.hull_id, user_state.c.cio_id)
                .where(user_state.c.hull_id.in_(hull_ids[start : start + 500]))
                .where(LIVE)
            ).all()
            found.update({hull_id: cio_id for hull_id, cio_id in rows if cio_id})
    return found
