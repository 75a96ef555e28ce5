"""Resync requests (`resync_requests`): people `cio-sync resync` asked to be sent again.

The command only records who; the next sync run (cio_sync/pipeline/resync.py) clears their
stored attribute hashes, fetches them from Hull by id, sends them, and removes the requests.
Recording a request changes no `user_state` row, so a run writing the same people meanwhile
cannot undo it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, delete, func, select, update

from cio_sync.store.db import as_utc, resync_requests, upsert, user_state, utcnow

CHUNK = 500


def state_hull_ids(engine: Engine, segment_ids: Iterable[str] | None = None) -> Iterator[str]:
    """Hull ids of `user_state`, in id order: all of them, or those whose whitelisted segments at
    their last decision include one of `segment_ids` (read in keyset chunks, never the whole table)."""
    wanted = None if segment_ids is None else set(segment_ids)
    after = ""
    while True:
        with engine.connect() as connection:
            rows = connection.execute(
                select(user_state.c.hull_id, user_state.c.segment_ids)
                .where(user_state.c.hull_id > after)
                .order_by(user_state.c.hull_id)
                .limit(CHUNK)
            ).all()
        if not rows:
            return
        for hull_id, segments in rows:
            if wanted is None or (isinstance(segments, list) and wanted.intersection(segments)):
                yield hull_id
        after = rows[-1][0]


def known_hull_ids(engine: Engine, hull_ids: list[str]) -> set[str]:
    """Those of `hull_ids` that have a `user_state` row."""
    found: set[str] = set()
    with engine.connect() as connection:
        for start in range(0, len(hull_ids), CHUNK):
            found.update(
                connection.execute(
                    select(user_state.c.hull_id).where(user_state.c.hull_id.in_(hull_ids[start : start + CHUNK]))
                ).scalars()
            )
    return found


def request_resync(engine: Engine, hull_ids: Iterable[str], requested_by: str) -> int:
    """Records a request per id (a repeated id is requested again, once); returns how many."""
    ids = list(dict.fromkeys(hull_ids))
    now = utcnow()
    with engine.begin() as connection:
        for start in range(0, len(ids), CHUNK):
            upsert(
                connection,
                resync_requests,
                [{"hull_id": i, "requested_at": now, "requested_by": requested_by} for i in ids[start : start + CHUNK]],
                "hull_id",
            )
    return len(ids)


def count_resync_requests(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(resync_requests)).scalar_one()


@dataclass(frozen=True)
class ResyncRequest:
    hull_id: str
    requested_at: datetime


def pending_resync(engine: Engine, after: str, limit: int) -> list[ResyncRequest]:
    """The next `limit` requests after Hull id `after` (keyset, in id order)."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(resync_requests.c.hull_id, resync_requests.c.requested_at)
            .where(resync_requests.c.hull_id > after)
            .order_by(resync_requests.c.hull_id)
            .limit(limit)
        ).all()
    return [ResyncRequest(r.hull_id, as_utc(r.requested_at) or utcnow()) for r in rows]


def forget_sent_state(engine: Engine, hull_ids: list[str]) -> None:
    """Clears what makes the diff call these people unchanged (the hash Customer.io last
    accepted) or not worth trying (the hash it last rejected): the next decision sends them."""
    with engine.begin() as connection:
        for start in range(0, len(hull_ids), CHUNK):
            connection.execute(
                update(user_state)
                .where(user_state.c.hull_id.in_(hull_ids[start : start + CHUNK]))
                .values(attributes_hash=None, rejected_hash=None, source_digest=None)
            )


def finish_resync(engine: Engine, requests: list[ResyncRequest]) -> None:
    """Removes the requests handled, unless one was made again since it was read."""
    with engine.begin() as connection:
        for request in requests:
            connection.execute(
                delete(resync_requests)
                .where(resync_requests.c.hull_id == request.hull_id)
                .where(resync_requests.c.requested_at <= request.requested_at)
            )
