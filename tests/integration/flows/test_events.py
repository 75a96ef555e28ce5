"""Events out, end to end: the real sync-users flow, real HTTP to both simulators, real SQL.

Events are created in the Hull simulator with explicit `created_at` values; its clock
starts at 2026-11-26T10:00:00Z.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import delete, select

from cio_sync.pipeline.events_page import EVENTS_CURSOR, events_query
from cio_sync.rules.events import event_ulid, parse_created_at
from cio_sync.settings import ConnectorSettings
from cio_sync.store import db
from cio_sync.store.cursors import Cursor, read_cursor
from flows.sync_users import SyncFailed, sync_users

pytestmark = pytest.mark.usefixtures("prefect_harness")

# Rules that do not depend on the database run on SQLite only, to keep the suite fast; the
# tests about state, cursors and exactly-once run on PostgreSQL too (`database_url`).
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

SETTINGS = dict(synchronized_segments=["VIP"], events_filter=["Signed Up", "page"])


def hull_id(n: int) -> str:
    return f"5bd329d5e2bcf3eeaf{n:06d}"


def user(n: int, segments=("s-vip",), **extra) -> dict:
    return {
        "id": hull_id(n),
        "email": f"user{n}@example.com",
        "external_id": f"u-{n}",
        "anonymous_ids": [f"web:{n}"],
        "created_at": "2020-01-01T00:00:00Z",
        "segment_ids": list(segments),
        **extra,
    }


def at(minute: int, second: int = 0) -> str:
    return f"2026-11-26T10:{minute:02d}:{second:02d}Z"


def ulid_of(event_id: str, created_at: str) -> str:
    return event_ulid(event_id, parse_created_at(created_at))


def add_event(hull, n: int, event_id: str, name: str = "Signed Up", created_at: str = at(1), **fields) -> dict:
    return hull.add_event(
        {"event_id": event_id, "event": name, "user_id": hull_id(n), "created_at": created_at, **fields}
    )


def event_posts(cio_sim) -> list[dict]:
    """Every event request Customer.io received, whatever it answered."""
    return [e for e in cio_sim.journal() if e["method"] == "POST" and e["path"].endswith("/events")]


def engine_of(sim_env):
    return db.get_engine(sim_env["STATE_DATABASE_URL"])


def event_rows(sim_env) -> dict[str, object]:
    with engine_of(sim_env).connect() as connection:
        return {r.hull_event_id: r for r in connection.execute(select(db.event_state))}


def events_cursor(sim_env) -> Cursor:
    return read_cursor(engine_of(sim_env), EVENTS_CURSOR)


# -- what is sent ----------------------------------------------------------------------------


@pytest.mark.postgres
def test_whitelisted_event_is_sent_once_with_its_body_and_ulid(sim_env, hull, cio_sim):
    hull.upsert_user(user(1))
    add_event(hull, 1, "e-signup", created_at=at(2, 3), properties={"plan": "gold", "seats": 3})

    summary = sync_users(**SETTINGS)

    expected_id = ulid_of("e-signup", at(2, 3))
    assert cio_sim.events == [
        {
            "customer": "u-1",
            "anonymous_id": None,
            "name": "Signed Up",
            "type": "event",
            "timestamp": 1795687323,
            "id": expected_id,
            "data": {"plan": "gold", "seats": 3},
        }
    ]
    assert [e["path"] for e in event_posts(cio_sim)] == ["/api/v1/customers/u-1/events"]
    assert summary["events"]["sent"] == 1 and summary["calls"]["event"] == 1
    row = event_rows(sim_env)["e-signup"]
    assert (row.status, row.cio_event_id, row.hull_user_id, row.event_name) == (
        "sent",
        expected_id,
        hull_id(1),
        "Signed Up",
    )
    assert events_cursor(sim_env).position == at(2, 3)


@sqlite_only
def test_an_event_with_a_property_json_cannot_carry_is_skipped_with_its_reason(sim_env, hull, cio_sim):
    """NaN in Hull's event properties: v1 could not even build the call, and the run stopped on
    it as if the API key were wrong, every time. Now the event is skipped, said why, once."""
    hull.upsert_user(user(1))
    add_event(hull, 1, "e-nan", created_at=at(1), properties={"score": float("nan")})
    add_event(hull, 1, "e-signup", created_at=at(2))

    summary = sync_users(**SETTINGS)

    assert [e["id"] for e in cio_sim.events] == [ulid_of("e-signup", at(2))]
    assert summary["events"]["sent"] == 1
    row = event_rows(sim_env)["e-nan"]
    assert (row.status, row.reason) == ("skipped", "data_not_json")
    assert events_cursor(sim_env).position == at(2)


@sqlite_only
def test_event_not_in_events_filter_is_not_sent(sim_env, hull, cio_sim):
    hull.upsert_user(user(1))
    add_event(hull, 1, "e-order", name="Order Completed", created_at=at(1))
    add_event(hull, 1, "e-signup", created_at=at(2))

    summary = sync_users(**SETTINGS)

    assert [e["name"] for e in cio_sim.events] == ["Signed Up"]
    assert len(event_posts(cio_sim)) == 1 and summary["events"]["sent"] == 1


@sqlite_only
def test_no_events_filter_sends_no_event(sim_env, hull, cio_sim):
    hull.upsert_user(user(1))
    add_event(hull, 1, "e-signup")

    summary = sync_users(synchronized_segments=["VIP"])

    assert cio_sim.people["u-1"] and event_posts(cio_sim) == []
    assert summary["events"] == {} and events_cursor(sim_env).position is None


@sqlite_only
def test_page_views_take_url_and_referrer_from_properties_else_from_context(sim_env, hull, cio_sim):
    hull.upsert_user(user(1))
    add_event(
        hull,
        1,
        "e-page-props",
        name="page",
        created_at=at(1),
        properties={"url": "https://example.com/pricing", "referrer": "https://google.com"},
        context={"page_url": "https://example.com/ignored", "referrer_url": "https://ignored.com"},
    )
    add_event(
        hull,
        1,
        "e-page-context",
        name="page",
        created_at=at(2),
        context={"page_url": "https://example.com/docs", "referrer_url": "https://bing.com", "ip": "1.2.3.4"},
    )

    sync_users(**SETTINGS)

    assert [(e["type"], e["name"], e["data"]) for e in cio_sim.events_for("u-1")] == [
        ("page", "https://example.com/pricing", {"referrer": "https://google.com"}),
        ("page", "https://example.com/docs", {"referrer": "https://bing.com"}),
    ]


@sqlite_only
def test_raw_form_event_with_props_list_is_sent(sim_env, hull, cio_sim):
    hull.upsert_user(user(1))
    stored = hull.add_raw_event(
        {
            "event_id": "raw-1",
            "event": "page",
            "user_id": hull_id(1),
            "created_at": at(3),
            "properties": {"url": "https://example.com/raw", "referrer": "https://r.com"},
        }
    )
    assert stored["_id"] == "raw-1" and "props" in stored and "event_id" not in stored

    summary = sync_users(**SETTINGS)

    assert cio_sim.events == [
        {
            "customer": "u-1",
            "anonymous_id": None,
            "name": "https://example.com/raw",
            "type": "page",
            "timestamp": 1795687380,
            "id": ulid_of("raw-1", at(3)),
            "data": {"referrer": "https://r.com"},
        }
    ]
    assert summary["events"]["sent"] == 1 and event_rows(sim_env)["raw-1"].status == "sent"


@sqlite_only
@pytest.mark.parametrize("anonymous_events", [True, False])
def test_event_of_user_without_mapped_id_follows_anonymous_events_setting(sim_env, hull, cio_sim, anonymous_events):
    hull.upsert_user(user(2, external_id=None, anonymous_ids=["web:2"]))
    add_event(hull, 2, "e-anon", created_at=at(1), anonymous_id="web:2", properties={"step": 1})

    summary = sync_users(**SETTINGS, anonymous_events=anonymous_events)

    assert summary["skip_reasons"] == {"no_id_value": 1}  # never identified
    if anonymous_events:
        posts = event_posts(cio_sim)
        assert [p["path"] for p in posts] == ["/api/v1/events"]
        assert posts[0]["body"]["anonymous_id"] == "web:2" and posts[0]["body"]["id"] == ulid_of("e-anon", at(1))
        assert cio_sim.events == [
            {
                "customer": None,
                "anonymous_id": "web:2",
                "name": "Signed Up",
                "type": "event",
                "timestamp": 1795687260,
                "id": ulid_of("e-anon", at(1)),
                "data": {"step": 1},
            }
        ]
        assert summary["calls"]["anonymous_event"] == 1
    else:
        assert event_posts(cio_sim) == [] and cio_sim.events == []
        assert summary["event_skip_reasons"] == {"anonymous_events_disabled": 1}
        assert event_rows(sim_env)["e-anon"].reason == "anonymous_events_disabled"


@sqlite_only
def test_event_of_user_outside_synchronized_segments_is_not_sent(sim_env, hull, cio_sim):
    hull.upsert_user(user(1))
    hull.upsert_user(user(3, segments=("s-other",)))
    add_event(hull, 3, "e-outsider", created_at=at(1))
    add_event(hull, 1, "e-insider", created_at=at(2))

    summary = sync_users(**SETTINGS)

    assert [(e["customer"], e["id"]) for e in cio_sim.events] == [("u-1", ulid_of("e-insider", at(2)))]
    assert all("/u-3" not in p["path"] for p in event_posts(cio_sim))
    assert summary["events"]["sent"] == 1


@sqlite_only
def test_oversize_name_and_data_are_skipped_counted_and_the_run_goes_on(sim_env, hull, cio_sim):
    long_name = "Signed Up " + "x" * 91  # 101 bytes
    hull.upsert_user(user(1))
    add_event(hull, 1, "e-long-name", name=long_name, created_at=at(1))
    add_event(hull, 1, "e-big-data", created_at=at(2), properties={"blob": "x" * 100_000})
    add_event(hull, 1, "e-fine", created_at=at(3), properties={"ok": True})

    summary = sync_users(**{**SETTINGS, "events_filter": ["Signed Up", long_name]})

    assert summary["event_skip_reasons"] == {"name_too_long": 1, "data_too_large": 1}
    assert summary["events"]["sent"] == 1
    assert [p["body"]["id"] for p in event_posts(cio_sim)] == [ulid_of("e-fine", at(3))]
    rows = event_rows(sim_env)
    assert (rows["e-long-name"].status, rows["e-long-name"].reason) == ("skipped", "name_too_long")
    assert (rows["e-big-data"].status, rows["e-big-data"].reason) == ("skipped", "data_too_large")
    assert events_cursor(sim_env).position == at(3)


# -- exactly once --------------------------------------------------------------------------


def test_rerun_sends_nothing_new_even_when_the_events_cursor_is_lost(sim_env, hull, cio_sim):
    hull.upsert_user(user(1))
    hull.upsert_user(user(2))
    add_event(hull, 1, "e-1", created_at=at(1))
    add_event(hull, 2, "e-2", created_at=at(2), name="page", properties={"url": "https://example.com/"})
    first = sync_users(**SETTINGS)
    first_ids = sorted(p["body"]["id"] for p in event_posts(cio_sim))
    assert first["events"]["sent"] == 2 and first_ids == sorted([ulid_of("e-1", at(1)), ulid_of("e-2", at(2))])

    # A new event at the cursor's own timestamp and one later: only those two go out.
    add_event(hull, 1, "e-3-same-second", created_at=at(2))
    add_event(hull, 2, "e-4-later", created_at=at(5))
    cio_sim.clear_journal()
    second = sync_users(**SETTINGS)
    assert sorted(p["body"]["id"] for p in event_posts(cio_sim)) == sorted(
        [ulid_of("e-3-same-second", at(2)), ulid_of("e-4-later", at(5))]
    )
    assert second["events"]["sent"] == 2

    cio_sim.clear_journal()
    assert sync_users(**SETTINGS)["events"].get("sent", 0) == 0
    assert event_posts(cio_sim) == []

    # Without the cursor the whole window is read again; event_state stops every resend.
    with engine_of(sim_env).begin() as connection:
        connection.execute(delete(db.sync_cursor).where(db.sync_cursor.c.name == EVENTS_CURSOR))
    rewound = sync_users(**SETTINGS)
    assert event_posts(cio_sim) == []
    assert rewound["events"] == {"already_handled": 4}
    assert events_cursor(sim_env).position == at(5)

    # Even with event_state lost too, the resent events carry the same ULIDs, and
    # Customer.io drops them: its dedupe is the second guard.
    with engine_of(sim_env).begin() as connection:
        connection.execute(delete(db.sync_cursor).where(db.sync_cursor.c.name == EVENTS_CURSOR))
        connection.execute(delete(db.event_state))
    sync_users(**SETTINGS)
    resent = sorted(p["body"]["id"] for p in event_posts(cio_sim))
    assert resent == sorted([*first_ids, ulid_of("e-3-same-second", at(2)), ulid_of("e-4-later", at(5))])
    assert len(cio_sim.events) == 4 and cio_sim.counts["duplicate_events"] == 4


@sqlite_only
def test_more_raw_events_on_one_second_than_a_page_are_all_sent_once(sim_env, hull, cio_sim):
    # 150 events share one created_at: the keyset walk must exclude the raw (`_id`) ids it
    # has already handled at that second, or page two would repeat page one and stall.
    for n in range(3):
        hull.upsert_user(user(n))
    for i in range(150):
        hull.add_raw_event(
            {"event_id": f"raw-{i:03d}", "event": "Signed Up", "user_id": hull_id(i % 3), "created_at": at(7)}
        )

    summary = sync_users(**SETTINGS)

    ids = [p["body"]["id"] for p in event_posts(cio_sim)]
    assert len(ids) == 150 and len(set(ids)) == 150
    assert summary["events"]["sent"] == 150 and len(cio_sim.events) == 150
    assert len(events_cursor(sim_env).seen_ids) == 150


def test_keyset_exclusion_names_both_event_id_fields():
    # Raw index documents carry their id in `_id`, not `event_id`: exclude on both.
    runtime = SimpleNamespace(
        settings=ConnectorSettings.model_construct(events_filter=["page"]), whitelisted_segment_ids={"s-vip"}
    )
    _filters, must_not = events_query(runtime, Cursor(position=at(7), seen_ids={"raw-001"}))
    excluded_fields = {next(iter(clause["bool"]["filter"][0]["terms"])) for clause in must_not}
    assert excluded_fields == {"event_id", "_id"}


# -- order and failures --------------------------------------------------------------------


@sqlite_only
def test_events_of_a_user_go_out_after_that_user_identify_calls(sim_env, hull, cio_sim):
    for n in (1, 2):
        hull.upsert_user(user(n))
        add_event(hull, n, f"e-{n}", created_at=at(n))

    sync_users(**SETTINGS)

    journal = cio_sim.journal()
    for n in (1, 2):
        identify = [
            i for i, e in enumerate(journal) if e["method"] == "PUT" and e["path"] == f"/api/v1/customers/u-{n}"
        ]
        events = [i for i, e in enumerate(journal) if e["path"] == f"/api/v1/customers/u-{n}/events"]
        assert identify and events and max(identify) < min(events)


def test_watermark_holds_on_401_and_nothing_is_lost(sim_env, hull, cio_sim):
    hull.upsert_user(user(1))
    add_event(hull, 1, "e-1", created_at=at(1))
    sync_users(**SETTINGS)
    assert events_cursor(sim_env).position == at(1)

    add_event(hull, 1, "e-2", created_at=at(4))
    cio_sim.faults.force("/events", 401, {"meta": {"error": "Unauthorized request"}})
    with pytest.raises(SyncFailed, match="Stopped while sending events"):
        sync_users(**SETTINGS)
    assert events_cursor(sim_env).position == at(1)
    assert "e-2" not in event_rows(sim_env)

    cio_sim.faults.clear()
    recovered = sync_users(**SETTINGS)
    assert recovered["events"]["sent"] == 1
    assert [e["id"] for e in cio_sim.events] == [ulid_of("e-1", at(1)), ulid_of("e-2", at(4))]


def test_event_rejected_with_400_is_recorded_failed_and_the_watermark_moves_past_it(sim_env, hull, cio_sim):
    hull.upsert_user(user(1))
    hull.upsert_user(user(2))
    add_event(hull, 2, "e-rejected", created_at=at(1))
    add_event(hull, 1, "e-accepted", created_at=at(2))
    cio_sim.faults.force("/customers/u-2/events", 400, {"meta": {"error": "something is wrong with u-2"}})

    summary = sync_users(**SETTINGS)

    assert summary["events"] == {"sent": 1, "failed": 1}
    assert any("something is wrong with u-2" in e for e in summary["errors"])
    rows = event_rows(sim_env)
    assert rows["e-rejected"].status == "failed" and "something is wrong with u-2" in rows["e-rejected"].reason
    assert events_cursor(sim_env).position == at(2)

    cio_sim.faults.clear()
    cio_sim.clear_journal()
    sync_users(**SETTINGS)
    assert event_posts(cio_sim) == []  # a 400 will not succeed as it is: not retried


@sqlite_only
def test_dry_run_sends_no_event_and_moves_no_cursor(sim_env, hull, cio_sim):
    hull.upsert_user(user(1))
    sync_users(**SETTINGS)
    add_event(hull, 1, "e-1", created_at=at(1))
    cio_sim.clear_journal()

    dry = sync_users(**SETTINGS, dry_run=True)

    assert dry["events"] == {"would_send": 1}
    assert event_posts(cio_sim) == [] and event_rows(sim_env) == {}
    assert events_cursor(sim_env).position is None
    assert sync_users(**SETTINGS)["events"]["sent"] == 1


@sqlite_only
def test_user_who_signs_up_after_the_users_phase_is_identified_before_its_event(sim_env, hull, cio_sim, monkeypatch):
    # The commonest whitelisted event, "Signed Up", is born with its user. When both appear in
    # Hull after this run's users phase, the events phase finds a user Customer.io does not
    # know yet: it must identify the user first, not drop the event for good.
    import cio_sync.pipeline.events_page as events_step

    hull.upsert_user(user(1))
    original_fetch = events_step.fetch_events_page

    def sign_up_during_the_run(runtime, cursor, *args, **kwargs):
        if hull.user(hull_id(2)) is None:
            hull.advance(30)
            hull.upsert_user(user(2))
            add_event(hull, 2, "e-born", created_at=at(0, 30))
        return original_fetch(runtime, cursor, *args, **kwargs)

    monkeypatch.setattr(events_step, "fetch_events_page", sign_up_during_the_run)
    summary = sync_users(**SETTINGS)

    assert [e["id"] for e in cio_sim.events_for("u-2")] == [ulid_of("e-born", at(0, 30))]
    journal = cio_sim.journal()
    identify = [i for i, e in enumerate(journal) if e["method"] == "PUT" and e["path"] == "/api/v1/customers/u-2"]
    posted = [i for i, e in enumerate(journal) if e["path"] == "/api/v1/customers/u-2/events"]
    assert identify and posted and max(identify) < min(posted)
    assert summary["events"]["sent"] == 1 and summary["decisions"]["insert"] == 2
    assert "user_not_in_customerio" not in summary["event_skip_reasons"]

    # The next users phase sees user 2 as already synced: no second identify, no resend.
    cio_sim.clear_journal()
    again = sync_users(**SETTINGS)
    assert [e for e in cio_sim.journal() if e["path"].startswith("/api/v1/customers/u-2")] == []
    assert again["events"].get("sent", 0) == 0


@sqlite_only
def test_event_of_user_the_user_rules_skip_is_skipped_without_identify(sim_env, hull, cio_sim):
    hull.upsert_user(user(4, email=None))  # in segments with an id, but "no email": never created
    add_event(hull, 4, "e-no-email", created_at=at(1))

    summary = sync_users(**SETTINGS)

    assert [e for e in cio_sim.journal() if "/customers/u-4" in e["path"]] == []
    assert summary["event_skip_reasons"] == {"user_not_in_customerio": 1}
    assert summary["skip_reasons"]["no_email"] >= 1
    assert event_rows(sim_env)["e-no-email"].status == "skipped"
