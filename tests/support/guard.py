"""Shared steps of the deletion-guard tests: users seeded in the VIP segment, users leaving
it, and the planned removals as the state database holds them."""

from __future__ import annotations

from sqlalchemy import select

from cio_sync.store import db
from tests.support.builders import hull_user


def seed(hull, count: int) -> None:
    for n in range(count):
        hull.upsert_user(hull_user(n))


def leave(hull, numbers) -> None:
    hull.advance(10)
    for n in numbers:
        hull.set_segments(hull_user(n)["id"], ["s-other"])


def planned_rows(url) -> list:
    with db.get_engine(url).connect() as connection:
        return list(connection.execute(select(db.planned_deletions).order_by(db.planned_deletions.c.id)))
