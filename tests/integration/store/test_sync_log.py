"""The sync log's storage: batched writes, write-back marks, bounded pruning, finding people;
on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cio_sync.store.db import get_engine, utcnow
from cio_sync.store.sync_log import (
    email_hash,
    find_people,
    latest_logged_values,
    mark_written_back,
    prune_sync_log,
    recent_rows,
    write_log_rows,
)
from cio_sync.store.users import record_user_outcomes

pytestmark = pytest.mark.postgres  # the store layer: SQLite and PostgreSQL


def row(hull_id: str, age_days: float = 0, **extra) -> dict:
    return {
        "run_id": "run-1",
        "logged_at": utcnow() - timedelta(days=age_days),
        "hull_id": hull_id,
        "cio_id": f"cio-{hull_id}",
        "decision": "update",
        "reason": "",
        **extra,
    }


def write(engine, rows: list[dict]) -> None:
    with engine.begin() as connection:
        write_log_rows(connection, rows)


def test_rows_past_the_retention_are_pruned_in_bounded_deletes(database_url):
    engine = get_engine(database_url)
    write(engine, [row(f"old-{n}", age_days=40) for n in range(7)] + [row("recent", age_days=29)])

    # Two statements of three rows each: six of the seven old rows go, nothing recent.
    assert prune_sync_log(engine, retention_days=30, batch=3, statements=2) == 6
    assert prune_sync_log(engine, retention_days=30, batch=3, statements=2) == 1  # the next run: the rest
    assert prune_sync_log(engine, retention_days=30, batch=3, statements=2) == 0
    assert [r["hull_id"] for r in recent_rows(engine, "recent")] == ["recent"]
    assert all(recent_rows(engine, f"old-{n}") == [] for n in range(7))


def test_a_write_back_marks_only_the_pending_rows_of_its_people(database_url):
    engine = get_engine(database_url)
    write(engine, [row("a", writeback="pending"), row("b", writeback="pending"), row("c", decision="skip")])
    mark_written_back(engine, ["a"], error="Hull 503")
    assert recent_rows(engine, "a")[0]["writeback_error"] == "Hull 503"
    assert recent_rows(engine, "a")[0]["writeback"] == "pending"
    mark_written_back(engine, ["a", "c"])
    [a] = recent_rows(engine, "a")
    assert a["writeback"] == "sent" and a["writeback_at"] is not None and a["writeback_error"] is None
    assert recent_rows(engine, "b")[0]["writeback"] == "pending"
    assert recent_rows(engine, "c")[0]["writeback"] is None


def test_people_are_found_by_hull_id_customerio_id_or_email(database_url):
    engine = get_engine(database_url)
    with engine.begin() as connection:
        record_user_outcomes(connection, [{"hull_id": "h1", "cio_id": "u-1", "last_decision": "insert"}])
    write(
        engine,
        [
            row("h1", cio_id="u-1", email_hash=email_hash("Ann@Example.com")),
            row("h2", cio_id="u-1", decision="skip", reason="duplicate_id"),
        ],
    )
    assert find_people(engine, "h1") == {"h1": "u-1"}
    assert find_people(engine, "ann@example.com") == {"h1": "u-1"}
    assert find_people(engine, "u-1") == {"h1": "u-1", "h2": "u-1"}
    assert find_people(engine, "nobody") == {}


def test_the_last_logged_value_of_each_attribute(database_url):
    engine = get_engine(database_url)
    write(
        engine,
        [
            row("h1", attribute_values={"plan": "gold", "n": 1}),
            row("h1", attribute_values={"plan": "silver"}),
            row("h1"),  # no values: logged with sync_log_values off
        ],
    )
    assert latest_logged_values(engine, ["h1", "h2"]) == {"h1": {"plan": "silver", "n": 1}}
