"""Shared steps of the deletion-guard tests: users seeded in the VIP segment, users leaving
it, and the planned removals as the state database holds them."""

from __future__ import annotations

from sqlalchemy import select

from cio_sync.cli.main import main as cli
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


def two_hundred_of_1000_leave(hull, cio_sim, capsys) -> tuple[list[str], str]:
    """1,000 users synced, then 200 (u-300 to u-499) leave the segment and `cio-sync sync-users`
    is refused (exit 1) for going over the removal limit: (their Customer.io ids, stderr)."""
    seed(hull, 1000)
    assert cli(["sync-users"]) == 0
    assert len(cio_sim.people) == 1000
    leaving = range(300, 500)
    leave(hull, leaving)
    capsys.readouterr()
    assert cli(["sync-users"]) == 1
    return sorted(f"u-{n}" for n in leaving), capsys.readouterr().err
