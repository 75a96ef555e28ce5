"""Failure paths of a whole sync-users run against the simulators: one breaker per phase, one
failed batch per phase, reruns that never resolve unfound work, write-back of any page size."""

from __future__ import annotations

from collections import Counter

import pytest

from cio_sync.store import db
from cio_sync.store.failed import list_failed_batches
from flows.rerun_failed_batches import rerun_failed_batches
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
        hull.add_event({"event_id": ids[-1], "event": "Signed Up", "user_id": hull_user(i % users)["id"],
                        "created_at": at(i), "properties": {"i": i}})
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
        sync_users(**SETTINGS, push_concurrency=1)

    # Three events, each tried 1 + HTTP_RETRIES times; then nothing more was sent.
    assert len(event_posts(cio_sim)) == 3 * (1 + 2)
    batches = open_batches(sim_env)
    assert [b["kind"] for b in batches] == ["events"]
    assert batches[0]["payload"]["hull_event_ids"] == ids[:100]  # the page it stopped in; later pages wait

    cio_sim.faults.clear()
    assert {r["result"] for r in rerun_failed_batches()["batches"]} == {"resolved"}
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
        hull.add_event({"event_id": f"ev-{i:04d}", "event": "Signed Up", "user_id": hull_user(owner)["id"],
                        "created_at": at(i)})
    cio_sim.faults.force("/customers/u-29/events", 503, method="POST")

    with pytest.raises(SyncFailed, match="could not be sent after retries"):
        sync_users(**SETTINGS, users_per_batch=10)

    batches = {b["kind"]: b for b in open_batches(sim_env)}
    assert sorted(batches) == ["events", "users"]  # one per phase, not one per page
    assert sorted(batches["users"]["payload"]["hull_ids"]) == sorted(hull_user(n)["id"] for n in (3, 13, 23))
    assert batches["events"]["payload"]["hull_event_ids"] == [f"ev-{i:04d}" for i in sorted(failing)]
    assert len(cio_sim.people) == 27 and len(cio_sim.events) == 227

