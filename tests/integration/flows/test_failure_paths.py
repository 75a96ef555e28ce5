"""Failure paths of a whole sync-users run against the simulators: one breaker per phase, one
failed batch per phase, reruns that never resolve unfound work, write-back of any page size."""

from __future__ import annotations

from collections import Counter

import pytest

from cio_sync.rules.events import event_ulid, parse_created_at
from cio_sync.settings import ConnectorSettings
from cio_sync.store import db
from cio_sync.store.failed import list_failed_batches, record_failed_batch
from flows.rerun_failed_batches import RerunIncomplete, rerun_failed_batches
from flows.sync_users import SyncFailed, sync_users
from tests.support.builders import hull_user

pytestmark = pytest.mark.usefixtures("prefect_harness")

SETTINGS = dict(synchronized_segments=["VIP"], events_filter=["Signed Up"])


@pytest.fixture
def hull(hull_sim):
    hull_sim.add_segment("s-vip", "VIP")
    return hull_sim


def at(second: int) -> str:
    return f"2026-11-26T09:{second // 60:02d}:{second % 60:02d}Z"


def add_events(hull, count: int, users: int) -> list[str]:
    ids = []
    for i in range(count):
        ids.append(f"ev-{i:04d}")
        hull.add_event(
            {
                "event_id": ids[-1],
                "event": "Signed Up",
                "user_id": hull_user(i % users)["id"],
                "created_at": at(i),
                "properties": {"i": i},
            }
        )
    return ids


def event_posts(cio_sim) -> list[dict]:
    return [e for e in cio_sim.journal() if e["method"] == "POST" and e["path"].endswith("/events")]


def open_batches(sim_env) -> list[dict]:
    return list_failed_batches(db.get_engine(sim_env["STATE_DATABASE_URL"]))


def test_customerio_down_during_the_events_phase_stops_it_after_three_events(sim_env, hull, cio_sim, monkeypatch):
    monkeypatch.setenv("HTTP_RETRIES", "2")
    for n in range(5):
        hull.upsert_user(hull_user(n))
    ids = add_events(hull, 250, users=5)  # three pages of events
    cio_sim.faults.force("/events", 503, method="POST")

    with pytest.raises(SyncFailed, match="3 events in a row even after retries, so the events phase stopped"):
        sync_users(**SETTINGS, push_concurrency=1, events_per_batch=100)

    # Three events, each tried 1 + HTTP_RETRIES times; then nothing more was sent.
    assert len(event_posts(cio_sim)) == 3 * (1 + 2)
    batches = open_batches(sim_env)
    assert [b["kind"] for b in batches] == ["events"]
    assert batches[0]["payload"]["hull_event_ids"] == ids[:100]  # the page it stopped in; later pages wait

    cio_sim.faults.clear()
    assert {r["result"] for r in rerun_failed_batches(**SETTINGS)["batches"]} == {"resolved"}
    sync_users(**SETTINGS, push_concurrency=1)
    sent = Counter(e["id"] for e in cio_sim.events)
    assert len(sent) == 250 and set(sent.values()) == {1}


def test_with_four_sender_threads_at_most_six_events_spend_their_retries(sim_env, hull, cio_sim, monkeypatch):
    monkeypatch.setenv("HTTP_RETRIES", "2")
    for n in range(8):
        hull.upsert_user(hull_user(n))
    add_events(hull, 120, users=8)
    cio_sim.faults.force("/events", 503, method="POST")

    with pytest.raises(SyncFailed, match="the events phase stopped"):
        sync_users(**SETTINGS)  # push_concurrency 4

    # The breaker opens after three; at most three more were already in flight on the other threads.
    assert len(event_posts(cio_sim)) <= (3 + 3) * (1 + 2)
    assert [b["kind"] for b in open_batches(sim_env)] == ["events"]


def test_failures_spread_over_pages_make_one_failed_batch_per_phase(sim_env, hull, cio_sim):
    for n in range(30):
        hull.upsert_user(hull_user(n))
    # One user failing on each of three users pages, never three in a row: the run goes on.
    for n in (3, 13, 23):
        cio_sim.faults.force(f"/customers/u-{n}", 503, method="PUT")
    # 230 events of users 0-9 but u-3, plus one event of u-29 on each events page; u-29's
    # events fail, never three in a row either.
    senders = [0, 1, 2, 4, 5, 6, 7, 8, 9]
    failing = {50: "a", 150: "b", 210: "c"}
    for i in range(230):
        owner = 29 if i in failing else senders[i % len(senders)]
        hull.add_event(
            {"event_id": f"ev-{i:04d}", "event": "Signed Up", "user_id": hull_user(owner)["id"], "created_at": at(i)}
        )
    cio_sim.faults.force("/customers/u-29/events", 503, method="POST")

    with pytest.raises(SyncFailed, match="could not be sent after retries"):
        sync_users(**SETTINGS, users_per_batch=10, events_per_batch=100)

    batches = {b["kind"]: b for b in open_batches(sim_env)}
    assert sorted(batches) == ["events", "users"]  # one per phase, not one per page
    assert sorted(batches["users"]["payload"]["hull_ids"]) == sorted(hull_user(n)["id"] for n in (3, 13, 23))
    assert batches["events"]["payload"]["hull_event_ids"] == [f"ev-{i:04d}" for i in sorted(failing)]
    assert len(cio_sim.people) == 27 and len(cio_sim.events) == 227


# -- reruns ---------------------------------------------------------------------------------


def test_a_raw_form_event_in_a_failed_batch_is_found_and_sent_on_rerun(sim_env, hull, cio_sim):
    hull.upsert_user(hull_user(1))
    # Only `_id`, as Hull's raw index stores it: no `event_id` field to find it by.
    stored = hull.add_raw_event(
        {
            "_id": "raw-77",
            "event": "Signed Up",
            "user_id": hull_user(1)["id"],
            "created_at": at(5),
            "props": [{"field_name": "plan", "text_value": "gold"}],
        }
    )
    assert "event_id" not in stored
    cio_sim.faults.force("/events", 503, method="POST")
    with pytest.raises(SyncFailed, match="could not be sent after retries"):
        sync_users(**SETTINGS)
    (batch,) = open_batches(sim_env)
    assert batch["payload"]["hull_event_ids"] == ["raw-77"] and cio_sim.events == []

    cio_sim.faults.clear()
    result = rerun_failed_batches(**SETTINGS)  # a rerun applies today's settings (issue 12)

    assert [row["result"] for row in result["batches"]] == ["resolved"]
    assert [(e["customer"], e["name"], e["data"], e["id"]) for e in cio_sim.events] == [
        ("u-1", "Signed Up", {"plan": "gold"}, event_ulid("raw-77", parse_created_at(at(5))))
    ]
    assert open_batches(sim_env) == []


def test_a_rerun_that_cannot_find_an_item_in_hull_keeps_the_batch_open_with_that_reason(sim_env, hull, cio_sim):
    hull.upsert_user(hull_user(0))
    hull.upsert_user(hull_user(2))
    add_events(hull, 1, users=1)  # ev-0000, of user 0
    settings = ConnectorSettings(**SETTINGS).model_dump(mode="json")
    engine = db.get_engine(sim_env["STATE_DATABASE_URL"])
    with engine.begin() as connection:
        record_failed_batch(
            connection, "events", {"hull_event_ids": ["ev-0000", "gone-1"], "settings": settings}, "HTTP 503", None
        )
        record_failed_batch(
            connection,
            "users",
            {"hull_ids": [hull_user(2)["id"], "5bd329d5e2bcf3eeafdeadbe"], "settings": settings},
            "HTTP 503",
            None,
        )

    with pytest.raises(RerunIncomplete):
        rerun_failed_batches(**SETTINGS)

    batches = {b["kind"]: b for b in open_batches(sim_env)}
    assert sorted(batches) == ["events", "users"]  # both still open
    assert "1 of the batch's 2 events were not found in Hull" in batches["events"]["error"]
    assert batches["events"]["error"].endswith("gone-1")
    assert "1 of the batch's 2 users were not found in Hull" in batches["users"]["error"]
    # What was found was done: the event sent once, the user identified.
    assert [e["id"] for e in cio_sim.events] == [event_ulid("ev-0000", parse_created_at(at(0)))]
    assert "u-2" in cio_sim.people


# -- write-back -----------------------------------------------------------------------------


def test_a_page_of_2500_users_is_written_back_whole(sim_env, hull, cio_sim):
    for n in range(2500):
        hull.upsert_user(hull_user(n))

    summary = sync_users(synchronized_segments=["VIP"], users_per_batch=2500, customerio_api="v2_batch")

    assert summary["pages"] == 1 and summary["decisions"] == {"insert": 2500}
    assert summary["writeback_sent"] == 2500 and summary["writeback_pending"] == 0
    written = [u for u in hull.users.values() if u.get("traits_customerio/id")]
    assert len(written) == 2500
