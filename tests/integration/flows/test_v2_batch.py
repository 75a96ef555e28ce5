"""The sync-users flow in v2_batch mode, end to end against both simulators."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cio_sync.pipeline import progress
from cio_sync.store import db
from flows.sync_users import sync_users
from tests.support.builders import hull_user
from tests.support.sims import poison_v2_entry

pytestmark = pytest.mark.usefixtures("prefect_harness")

SETTINGS = dict(
    synchronized_segments=["VIP"],
    synchronized_attributes=["plan", "coconuts", "bio"],
    customerio_api="v2_batch",
)


user = hull_user


def cio_requests(cio_sim):
    return [e for e in cio_sim.journal() if not e["path"].startswith("/_sim")]


def rows_error(sim_env, n):
    return state_rows(sim_env["STATE_DATABASE_URL"])[user(n)["id"]].last_error


def state_rows(url):
    with db.get_engine(url).connect() as connection:
        return {r.hull_id: r for r in connection.execute(select(db.user_state))}


def test_inserts_updates_and_deletes_go_through_the_batch_endpoint(sim_env, hull, cio_sim):
    for n in range(5):
        hull.upsert_user(user(n))
    first = sync_users(**SETTINGS, enable_user_deletion=True)
    assert first["decisions"] == {"insert": 5}
    assert first["calls"]["identify"] == 5 and first["calls"]["batch"] == 1
    assert {e["path"] for e in cio_requests(cio_sim)} == {"/api/v2/batch"}
    assert cio_sim.people["u-3"]["plan"] == "gold" and cio_sim.people["u-3"]["coconuts"] == 3
    assert cio_sim.people["u-3"]["email"] == "user3@example.com"
    assert cio_sim.people["u-3"]["hull_segments"] == ["VIP"]

    cio_sim.clear_journal()
    hull.advance(10)
    hull.set_trait(user(1)["id"], "plan", "silver")
    hull.set_segments(user(2)["id"], ["s-other"])
    second = sync_users(**SETTINGS, enable_user_deletion=True)
    assert second["decisions"].get("update") == 1 and second["decisions"].get("delete") == 1
    assert cio_sim.people["u-1"]["plan"] == "silver"
    assert "u-2" not in cio_sim.people and "u-2" in cio_sim.deleted
    batch = [entry for e in cio_requests(cio_sim) for entry in e["body"]["batch"]]
    assert sorted((entry["action"], entry["identifiers"]["id"]) for entry in batch) == [
        ("delete", "u-2"),
        ("identify", "u-1"),
    ]
    rows = state_rows(sim_env["STATE_DATABASE_URL"])
    assert rows[user(2)["id"]].deleted_at is not None and rows[user(1)["id"]].last_error is None

    cio_sim.clear_journal()
    third = sync_users(**SETTINGS, enable_user_deletion=True)
    assert cio_requests(cio_sim) == [] and third["calls"].get("batch", 0) == 0


def test_a_207_marks_exactly_the_rejected_user_failed(sim_env, hull, cio_sim):
    for n in range(4):
        hull.upsert_user(user(n))
    # The connector is told values may be 5,000 bytes, so it sends this 2,000-byte value;
    # Customer.io (the simulator) allows 1,000 and rejects that one entry with a 207.
    hull.upsert_user(user(9, traits_bio="b" * 2000))
    summary = sync_users(**SETTINGS, max_attribute_value_length=5000)

    assert summary["decisions"] == {"insert": 5}
    assert summary["failed_users"] == {"permanent": 1}
    assert set(cio_sim.people) == {"u-0", "u-1", "u-2", "u-3"}
    rows = state_rows(sim_env["STATE_DATABASE_URL"])
    failed = rows[user(9)["id"]]
    assert failed.synced_at is None and "cannot be longer than 1000 bytes" in failed.last_error
    assert all(rows[user(n)["id"]].synced_at is not None and rows[user(n)["id"]].last_error is None for n in range(4))
    assert any("u-9" not in e and "1000 bytes" in e for e in summary["errors"])


def test_progress_follows_pages_to_100_percent(sim_env, hull, cio_sim):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    for n in range(5):
        hull.upsert_user(user(n))
    seen = []

    def listener(done, total):
        seen.append((done, total))

    progress.add_listener(listener)
    try:
        state = sync_users(**SETTINGS, users_per_batch=2, return_state=True)
    finally:
        progress.remove_listener(listener)
    assert state.is_completed()
    assert seen == [(2, 5), (4, 5), (5, 5), (5, 5)]  # three pages, then the end of the walk
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["sync-users-progress"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    assert [a.data for a in artifacts] == [100.0]


@pytest.mark.postgres
def test_a_poisoned_entry_fails_alone_and_every_other_user_is_delivered(sim_env, hull, cio_sim):
    for n in range(40):
        hull.upsert_user(user(n))
    poison_v2_entry(cio_sim, "u-17")

    summary = sync_users(**SETTINGS)  # completes: a 400 is one bad user, not a failed batch

    assert set(cio_sim.people) == {f"u-{n}" for n in range(40) if n != 17}
    assert summary["failed_users"] == {"permanent": 1} and summary["failed_batches"] == []
    assert [e for e in summary["errors"] if "simulated: a poisoned entry" in e] == [
        f"user {user(17)['id']}: " + rows_error(sim_env, 17)
    ]
    rows = state_rows(sim_env["STATE_DATABASE_URL"])
    assert "simulated: a poisoned entry" in rows[user(17)["id"]].last_error
    assert rows[user(17)["id"]].created_at is None  # never reached Customer.io
    assert all(rows[user(n)["id"]].last_error is None for n in range(40) if n != 17)
    statuses = [e["status"] for e in cio_requests(cio_sim)]
    assert statuses.count(400) >= 2 and statuses.count(200) >= 2  # split, resent, isolated
