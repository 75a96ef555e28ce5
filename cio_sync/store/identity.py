"""The `user_id_mapping` each users stream last ran with, and the start of an id migration."""

from __future__ import annotations

from sqlalchemy import Engine, delete, select, update

from cio_sync.store.db import stream_identity, sync_cursor, upsert, user_state, utcnow


def read_stream_mapping(engine: Engine, stream: str) -> str | None:
    with engine.connect() as connection:
        return connection.execute(
            select(stream_identity.c.user_id_mapping).where(stream_identity.c.stream == stream)
        ).scalar_one_or_none()


def latest_stream_mapping(engine: Engine) -> str | None:
    """The mapping the users streams ran with most recently (all shards share one)."""
    with engine.connect() as connection:
        return connection.execute(
            select(stream_identity.c.user_id_mapping).order_by(stream_identity.c.updated_at.desc()).limit(1)
        ).scalar_one_or_none()


def record_stream_mapping(engine: Engine, stream: str, user_id_mapping: str) -> None:
    with engine.begin() as connection:
        upsert(
            connection,
            stream_identity,
            [{"stream": stream, "user_id_mapping": user_id_mapping, "updated_at": utcnow()}],
            "stream",
        )


def start_id_migration(engine: Engine, stream: str, old_mapping: str, new_mapping: str) -> None:
    """In one transaction: rows written before the mapping was recorded per row are marked as
    sent under `old_mapping` (so the old person is addressed with the right identifier type),
    the stream's users cursor is reset (the next walk reads every user, and each one's id
    change is handled as any other), and `new_mapping` becomes the stream's mapping. A run
    killed after this goes on with the walk: the migration is the walk from the start."""
    with engine.begin() as connection:
        connection.execute(
            update(user_state).where(user_state.c.cio_id_mapping.is_(None)).values(cio_id_mapping=old_mapping)
        )
        connection.execute(delete(sync_cursor).where(sync_cursor.c.name == stream))
        upsert(
            connection,
            stream_identity,
            [{"stream": stream, "user_id_mapping": new_mapping, "updated_at": utcnow()}],
            "stream",
        )
