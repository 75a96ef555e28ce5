"""Watermarks that survive late and future data, a first run that does not replay history,
backfills on purpose, shard layouts that change, and failures that heal by themselves: the
real sync-users and backfill-events flows against the simulators, on SQLite (and PostgreSQL for
the two tests that lean on how each database stores and compares times).

Two clocks meet here. The Hull simulator's data is dated on its own clock (from
2026-11-26T10:00:00Z); a run's `events_start`, its cap and the future tolerance use the wall
clock. Tests about those use events dated on the wall clock (`ago`, `ahead`); the others use
the test environment's long lookback (tests/support/sims.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from cio_sync.cli.main import main
from cio_sync.pipeline.watermarks import EVENTS_START
from cio_sync.rules.events import event_ulid, parse_created_at
from cio_sync.rules.watermarks import EVENTS_SAFETY_LAG, format_position, is_after
from cio_sync.store import db
from cio_sync.store.cursors import read_cursor, read_meta
from cio_sync.store.failed import list_failed_batches, mark_rerun, record_failed_batch
from flows.backfill_events import backfill_events
from flows.sync_users import SyncFailed, sync_users
from tests.support.builders import hull_user
from tests.support.scenario import SETTINGS as SCENARIO
from tests.support.scenario import assert_events_exactly_once, customerio_state, seed

pytestmark = pytest.mark.usefixtures("prefect_harness")

SETTINGS = dict(synchronized_segments=["VIP"], events_filter=["Signed Up"])


def at(minute: int, hour: int = 10) -> str:
    """A time on the simulator's day."""
    return f"2026-11-26T{hour:02d}:{minute:02d}:00Z"


def ago(**delta) -> str:
    return format_position(datetime.now(timezone.utc) - timedelta(**delta))


def ahead(**delta) -> str:
    return format_position(datetime.now(timezone.utc) + timedelta(**delta))


def ulid(event_id: str, created_at: str) -> str:
    return event_ulid(event_id, parse_created_at(created_at))


@pytest.fixture
def engine(sim_env):
    return db.get_engine(sim_env["STATE_DATABASE_URL"])


def add_event(hull, n: int, event_id: str, created_at: str) -> None:
    hull.add_event(
        {"event_id": event_id, "event": "Signed Up", "user_id": hull_user(n)["id"], "created_at": created_at}
    )


def posted_event_ids(cio_sim) -> list[str]:
    return [e["body"]["id"] for e in cio_sim.journal() if e["method"] == "POST" and e["path"].endswith("/events")]


def calls(cio_sim) -> list[tuple[str, str]]:
    return [(e["method"], e["path"]) for e in cio_sim.journal() if not e["path"].startswith("/_sim")]


# -- events: late, future, first run -------------------------------------------------------------


def test_a_late_event_inside_the_overlap_window_is_sent_once(sim_env, hull, cio_sim, engine):
    hull.upsert_user(hull_user(1))
    add_event(hull, 1, "e-early", at(5))
    add_event(hull, 1, "e-last", at(30))
    assert sync_users(**SETTINGS)["events"]["sent"] == 2
    assert read_cursor(engine, "events").position == at(30)

    # Indexed after the cursor passed its created_at (an offline phone, an import, a skewed clock).
    add_event(hull, 1, "e-late", at(10))
    cio_sim.clear_journal()
    second = sync_users(**SETTINGS)
    assert posted_event_ids(cio_sim) == [ulid("e-late", at(10))]
    assert second["events"] == {"sent": 1, "already_handled": 2}  # the window re-read, nothing resent

    cio_sim.clear_journal()
    assert sync_users(**SETTINGS)["events"].get("sent", 0) == 0
    assert posted_event_ids(cio_sim) == []

    # Without the window the cursor's own bound loses such an event: the window is what saves it.
    add_event(hull, 1, "e-late-again", at(20))
    assert sync_users(**SETTINGS, events_overlap_minutes=0)["events"].get("sent", 0) == 0
    assert sync_users(**SETTINGS)["events"]["sent"] == 1
    assert sorted(e["id"] for e in cio_sim.events) == sorted(
        ulid(i, t) for i, t in [("e-early", at(5)), ("e-last", at(30)), ("e-late", at(10)), ("e-late-again", at(20))]
    )


@pytest.mark.postgres
def test_a_future_dated_event_is_decided_once_and_does_not_stop_the_events_after_it(sim_env, hull, cio_sim, engine):
    hull.upsert_user(hull_user(1))
    add_event(hull, 1, "e-before", ago(minutes=10))
    add_event(hull, 1, "e-2031", ahead(days=5 * 365))  # a client with a broken clock
    add_event(hull, 1, "e-soon", ahead(minutes=10))  # within the tolerance: sent with its own timestamp
    started = datetime.now(timezone.utc)
    first = sync_users(**SETTINGS)
    assert first["events"]["sent"] == 2 and first["event_skip_reasons"] == {"future_timestamp": 1}
    cursor = read_cursor(engine, "events").position  # held at the run's start minus the safety lag
    assert cursor is not None and not is_after(cursor, format_position(datetime.now(timezone.utc) - EVENTS_SAFETY_LAG))
    assert is_after(cursor, format_position(started - EVENTS_SAFETY_LAG - timedelta(seconds=1)))
    with engine.connect() as connection:
        row = connection.execute(select(db.event_state).where(db.event_state.c.hull_event_id == "e-2031")).one()
    assert (row.status, row.reason) == ("skipped", "future_timestamp")

    add_event(hull, 1, "e-after-1", ago(seconds=30))
    add_event(hull, 1, "e-after-2", ago(minutes=2))
    second = sync_users(**SETTINGS)
    assert second["events"]["sent"] == 2 and second["event_skip_reasons"] == {}  # decided once
    created = {e["event_id"]: e["created_at"] for e in hull.events}
    assert sorted(e["id"] for e in cio_sim.events) == sorted(
        ulid(i, created[i]) for i in ("e-before", "e-soon", "e-after-1", "e-after-2")
    )
    assert not is_after(read_cursor(engine, "events").position, format_position(datetime.now(timezone.utc)))


def test_a_first_run_over_three_years_of_history_sends_only_the_lookback(sim_env, hull, cio_sim, engine, monkeypatch):
    monkeypatch.setenv("EVENTS_INITIAL_LOOKBACK_HOURS", "24")  # the default
    hull.upsert_user(hull_user(1))
    for day in range(1, 3 * 365):
        add_event(hull, 1, f"e-day-{day}", ago(days=day, minutes=30))
    recent = {f"e-recent-{hours}h": ago(hours=hours) for hours in (1, 5, 12, 23)}
    for event_id, created_at in recent.items():
        add_event(hull, 1, event_id, created_at)
    started = datetime.now(timezone.utc)

    summary = sync_users(**SETTINGS)

    assert sorted(posted_event_ids(cio_sim)) == sorted(ulid(i, t) for i, t in recent.items())
    assert summary["events"] == {"sent": 4}
    start = read_meta(engine, EVENTS_START)
    assert start is not None and abs(parse_created_at(start) - (started - timedelta(hours=24))) < timedelta(minutes=1)
    cio_sim.clear_journal()
    assert sync_users(**SETTINGS)["events"].get("sent", 0) == 0 and posted_event_ids(cio_sim) == []
    assert read_meta(engine, EVENTS_START) == start  # kept, not moved by later runs


def test_a_backfill_sends_a_window_once_and_leaves_the_scheduled_cursor_where_it_was(
    sim_env, hull, cio_sim, engine, monkeypatch, capsys
):
    monkeypatch.setenv("EVENTS_INITIAL_LOOKBACK_HOURS", "24")
    for key, value in (("SYNCHRONIZED_SEGMENTS", '["VIP"]'), ("EVENTS_FILTER", '["Signed Up"]')):
        monkeypatch.setenv(key, value)
    hull.upsert_user(hull_user(1))
    days = {f"e-day-{d}": ago(days=d, minutes=30) for d in range(1, 11)}
    for event_id, created_at in days.items():
        add_event(hull, 1, event_id, created_at)
    add_event(hull, 1, "e-recent", ago(hours=2))
    assert sync_users()["events"] == {"sent": 1}
    cursor = read_cursor(engine, "events")
    assert cursor.position is not None

    cio_sim.clear_journal()
    first = backfill_events(since=ago(days=5))
    in_window = {i: t for i, t in days.items() if int(i.rsplit("-", 1)[1]) < 5}
    assert sorted(posted_event_ids(cio_sim)) == sorted(ulid(i, t) for i, t in in_window.items())
    # Days 1 and 2 are less than 72 hours old: Customer.io may trigger campaigns for them.
    assert first["events"] == {"sent": 4, "sent_within_72h": 2, "already_handled": 1}
    assert any("2 of the events sent are less than 72 hours old" in w for w in first["warnings"])
    assert read_cursor(engine, "events") == cursor

    cio_sim.clear_journal()
    again = backfill_events(since=ago(days=5))  # twice: nothing twice
    assert posted_event_ids(cio_sim) == [] and again["events"] == {"already_handled": 5}
    assert read_cursor(engine, "events") == cursor

    # The CLI, dry: counts what an older window would send, sends nothing, records nothing.
    assert main(["backfill-events", "--since", ago(days=10, hours=1), "--until", ago(days=6), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "events would_send: 5" in out and "within_72h" not in out
    assert posted_event_ids(cio_sim) == [] and read_cursor(engine, "events") == cursor
    with engine.connect() as connection:
        decided = set(connection.execute(select(db.event_state.c.hull_event_id)).scalars())
    assert decided == {"e-recent", *in_window}

    cio_sim.clear_journal()
    assert sync_users()["events"].get("sent", 0) == 0 and posted_event_ids(cio_sim) == []
    assert read_cursor(engine, "events") == cursor


# -- shard layouts -------------------------------------------------------------------------------


def test_changing_shard_count_sends_nothing_twice(sim_env, hull, cio_sim, engine):
    for n in range(12):
        hull.upsert_user(hull_user(n))
        add_event(hull, n, f"e-{n}", at(n))
    hull.upsert_user(hull_user(20, email=None))  # its event is decided "not to send"
    add_event(hull, 20, "e-no-email", at(15))
    outsider = hull_user(30, segments=("s-other",))
    hull.upsert_user(outsider)
    add_event(hull, 30, "e-outsider-old", at(0, hour=8))  # never read: the user was not synchronized
    first = sync_users(**SETTINGS)
    assert first["events"]["sent"] == 12 and first["event_skip_reasons"] == {"user_not_in_customerio": 1}

    hull.advance(60)
    hull.set_segments(outsider["id"], ["s-vip"])  # joins later: its old event is history
    cio_sim.clear_journal()
    for index in range(3):
        sync_users(**SETTINGS, shard_count=3, shard_index=index)
    assert calls(cio_sim) == [("PUT", "/api/v1/customers/u-30")]  # only the newcomer's identify

    cio_sim.clear_journal()
    for index in range(2):
        sync_users(**SETTINGS, shard_count=2, shard_index=index)
    sync_users(**SETTINGS)  # and back to one: its own cursor is older than the shards' work
    assert calls(cio_sim) == []
    assert len(cio_sim.events) == 12 and "e-outsider-old" not in {r for r in _decided(engine)}


def _decided(engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.execute(select(db.event_state.c.hull_event_id)).scalars())


# -- users ---------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_user_that_becomes_searchable_late_or_changes_in_the_cursors_second_is_synced_by_the_next_run(
    sim_env, hull, cio_sim
):
    settings = dict(synchronized_segments=["VIP"], synchronized_attributes=["plan"])
    for n in range(3):
        hull.upsert_user(hull_user(n))
    assert sync_users(**settings)["decisions"] == {"insert": 3}

    # Changed in the very second the cursor stands on, after the run read it.
    hull.set_trait(hull_user(1)["id"], "plan", "platinum")
    # Searchable only now, although Hull indexed it 20 seconds before the cursor.
    hull.advance(-20)
    hull.upsert_user(hull_user(7))
    hull.advance(20)

    blind = sync_users(**settings, users_overlap_seconds=0)  # the old cursor rule misses both
    assert blind["decisions"].get("insert", 0) == 0 and blind["decisions"].get("update", 0) == 0
    cio_sim.clear_journal()
    summary = sync_users(**settings)
    assert summary["decisions"] == {"insert": 1, "update": 1, "skip": 2}
    assert sorted(calls(cio_sim)) == [("PUT", "/api/v1/customers/u-1"), ("PUT", "/api/v1/customers/u-7")]
    assert cio_sim.people["u-1"]["plan"] == "platinum"

    cio_sim.clear_journal()
    again = sync_users(**settings)  # the overlap is re-read: unchanged users cost no call
    assert calls(cio_sim) == [] and set(again["decisions"]) <= {"skip"}


def test_a_user_customerio_rejected_is_not_sent_again_unchanged_when_the_overlap_rereads_it(sim_env, hull, cio_sim):
    settings = dict(synchronized_segments=["VIP"], synchronized_attributes=["plan"])
    for n in range(2):
        hull.upsert_user(hull_user(n))
    cio_sim.faults.force("/customers/u-1", 400, {"meta": {"error": "something is wrong with u-1"}})
    assert sync_users(**settings)["failed_users"] == {"permanent": 1}
    cio_sim.clear_journal()
    again = sync_users(**settings)
    assert calls(cio_sim) == [] and again["skip_reasons"]["rejected_unchanged"] == 1
    cio_sim.faults.clear()
    hull.advance(5)
    hull.set_trait(hull_user(1)["id"], "plan", "fixed")  # changed: tried again
    assert sync_users(**settings)["decisions"]["insert"] == 1 and "u-1" in cio_sim.people


# -- failures that heal ----------------------------------------------------------------------------


def test_an_outage_that_ends_is_healed_by_the_next_plain_scheduled_run(baseline, sim_env, hull_sim, cio_sim, engine):
    expected = baseline()
    seed(hull_sim)
    cio_sim.faults.down(True)
    with pytest.raises(SyncFailed, match="failed batch"):
        sync_users(**SCENARIO)
    assert [b["kind"] for b in list_failed_batches(engine)] == ["users"]

    cio_sim.faults.down(False)
    healed = sync_users(**SCENARIO)  # no `cio-sync failed rerun`: the run retries the batch first
    assert healed["batch_retries"] == {"resolved": 1}
    assert list_failed_batches(engine) == []
    assert customerio_state(cio_sim) == expected
    assert_events_exactly_once(cio_sim, expected)


def test_batches_out_of_automatic_retries_or_failed_permanently_wait_for_a_person(sim_env, hull, cio_sim, engine):
    for n in range(3):
        hull.upsert_user(hull_user(n))
    ids = [hull_user(n)["id"] for n in range(3)]
    with engine.begin() as connection:
        spent = record_failed_batch(connection, "users", {"hull_ids": [ids[0]]}, "Customer.io 503", None)
        permanent = record_failed_batch(connection, "users", {"hull_ids": [ids[1]]}, "Hull 404", None)
        fresh = record_failed_batch(connection, "users", {"hull_ids": [ids[2]]}, "Customer.io 503", None)
    for _ in range(5):
        mark_rerun(engine, spent, False, "Customer.io 503", transient=True)  # 1 failure + 5 retries
    mark_rerun(engine, permanent, False, "Hull 404: no such user", transient=False)

    summary = sync_users(**SETTINGS)

    assert summary["batch_retries"] == {"resolved": 1, "waiting_for_a_person": 2}
    assert any(f"failed batches [{spent}, {permanent}] are not retried automatically" in w for w in summary["warnings"])
    still_open = {b["id"]: b["attempts"] for b in list_failed_batches(engine)}
    assert still_open == {spent: 6, permanent: 2} and fresh not in still_open
