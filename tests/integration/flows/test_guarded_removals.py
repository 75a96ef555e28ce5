"""Suppresses (on_segment_exit=suppress) and the delete of an id change's old person
(on_id_change=delete_old) go through the deletion guard like deletes: planned by the page,
re-checked and sent at the end of the run, held for approval over max_deletions_per_run.
Real flows, real HTTP to both simulators, real SQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cio_sync.cli.main import main as cli
from cio_sync.store import db
from flows.sync_users import SyncFailed, sync_users
from tests.support.builders import hull_user as user
from tests.support.guard import leave, planned_rows, seed, two_hundred_of_1000_leave

pytestmark = pytest.mark.usefixtures("prefect_harness")

SUPPRESSING = dict(
    synchronized_segments=["VIP"], synchronized_attributes=["plan"], on_segment_exit="suppress", users_overlap_seconds=0
)
MOVING = dict(synchronized_segments=["VIP"], on_id_change="delete_old", users_overlap_seconds=0)


def requests(cio_sim) -> list[tuple[str, str]]:
    """(action, Customer.io id) of each v1 call or v2 entry, in order."""
    calls = []
    for request in cio_sim.journal():
        path = request["path"]
        if path.startswith("/_sim"):
            continue
        if path == "/api/v2/batch":
            for entry in request["body"]["batch"]:
                calls.append((entry["action"], next(iter(entry.get("identifiers", {}).values()), "")))
        elif path.endswith(("/suppress", "/unsuppress")):
            calls.append((path.rsplit("/", 1)[1], path.split("/")[-2]))
        elif request["method"] == "DELETE":
            calls.append(("delete", path.rsplit("/", 1)[-1]))
        elif request["method"] == "PUT":
            calls.append(("identify", path.rsplit("/", 1)[-1]))
    return calls


def suppressed(cio_sim) -> list[str]:
    return sorted(i for action, i in requests(cio_sim) if action == "suppress")


def state_row(url: str, hull_id: str):
    with db.get_engine(url).connect() as connection:
        return connection.execute(select(db.user_state).where(db.user_state.c.hull_id == hull_id)).one()


def log_rows(url: str, hull_id: str) -> list:
    with db.get_engine(url).connect() as connection:
        return list(
            connection.execute(select(db.sync_log).where(db.sync_log.c.hull_id == hull_id).order_by(db.sync_log.c.id))
        )


@pytest.mark.parametrize("api", ["v1", "v2_batch"])
def test_200_of_1000_leaving_with_suppress_wait_for_approval_and_the_cli_suppresses_exactly_them(
    sim_env, hull, cio_sim, monkeypatch, capsys, api
):
    monkeypatch.setenv("SYNCHRONIZED_SEGMENTS", '["VIP"]')
    monkeypatch.setenv("ON_SEGMENT_EXIT", "suppress")
    monkeypatch.setenv("CUSTOMERIO_API", api)
    expected, err = two_hundred_of_1000_leave(hull, cio_sim, capsys)
    assert (
        "200 people would be removed from Customer.io (200 deleted and suppressed)" in err
        and "max_deletions_per_run (100)" in err
    )
    assert "cio-sync sync-users --approve-deletions" in err
    assert suppressed(cio_sim) == [] and len(cio_sim.people) == 1000 and not cio_sim.suppressed
    rows = planned_rows(sim_env["STATE_DATABASE_URL"])
    assert {r.action for r in rows} == {"suppress"} and {r.status for r in rows} == {"planned"}
    assert sorted(r.cio_id for r in rows) == expected and len({r.plan_id for r in rows}) == 1
    assert state_row(sim_env["STATE_DATABASE_URL"], user(300)["id"]).suppressed_at is None

    assert cli(["sync-users", "--approve-deletions"]) == 0
    assert suppressed(cio_sim) == expected
    assert all(cio_sim.is_suppressed(i) for i in expected) and len(cio_sim.people) == 800
    row = state_row(sim_env["STATE_DATABASE_URL"], user(300)["id"])
    assert row.suppressed_at is not None and row.deleted_at is not None
    assert hull.users[user(300)["id"]]["traits_customerio/deleted_at"] is not None  # written back
    assert {r.status for r in planned_rows(sim_env["STATE_DATABASE_URL"])} == {"sent"}
    assert cli(["sync-users"]) == 0
    assert suppressed(cio_sim) == expected  # nothing more


@pytest.mark.parametrize("api", ["v1", "v2_batch"])
def test_a_handful_leaving_are_suppressed_at_the_end_of_the_run(sim_env, hull, cio_sim, api):
    seed(hull, 30)
    sync_users(**SUPPRESSING, customerio_api=api)
    leave(hull, range(5))
    hull.set_trait(user(20)["id"], "plan", "touched")  # an update in the same page
    cio_sim.clear_journal()
    summary = sync_users(**SUPPRESSING, customerio_api=api)

    assert summary["decisions"]["suppress"] == 5 and summary["calls"]["suppress"] == 5
    assert summary["deletions"] == {"suppressed": 5}
    calls = requests(cio_sim)
    assert suppressed(cio_sim) == sorted(f"u-{n}" for n in range(5))
    # Sent by the guard after the page: every suppress comes after the page's identify.
    assert calls.index(("identify", "u-20")) < min(i for i, (action, _) in enumerate(calls) if action == "suppress")
    assert len(cio_sim.people) == 25 and all(cio_sim.is_suppressed(f"u-{n}") for n in range(5))
    url = sim_env["STATE_DATABASE_URL"]
    assert state_row(url, user(0)["id"]).suppressed_at is not None
    decisions = [r.decision for r in log_rows(url, user(0)["id"])]
    assert decisions[-1] == "suppress"
    assert {r.status for r in planned_rows(url)} == {"sent"}


@pytest.mark.parametrize("api", ["v1", "v2_batch"])
def test_a_person_back_in_a_segment_before_the_approval_is_not_suppressed(sim_env, hull, cio_sim, monkeypatch, api):
    monkeypatch.setenv("MAX_DELETIONS_PER_RUN", "2")
    seed(hull, 10)
    sync_users(**SUPPRESSING, customerio_api=api)
    leave(hull, [1, 2, 3])
    with pytest.raises(SyncFailed, match=r"3 people would be removed from Customer.io \(3 deleted and suppressed\)"):
        sync_users(**SUPPRESSING, customerio_api=api)
    assert suppressed(cio_sim) == []
    hull.set_segments(user(3)["id"], ["s-vip"])  # back before the approval
    summary = sync_users(**SUPPRESSING, customerio_api=api, approve_deletions=True)
    assert suppressed(cio_sim) == ["u-1", "u-2"]
    assert "u-3" in cio_sim.people and not cio_sim.is_suppressed("u-3")
    assert state_row(sim_env["STATE_DATABASE_URL"], user(3)["id"]).suppressed_at is None
    assert summary["deletions"]["suppressed"] == 2


def test_turning_suppress_off_cancels_the_planned_suppresses(sim_env, hull, cio_sim, monkeypatch):
    monkeypatch.setenv("MAX_DELETIONS_PER_RUN", "1")
    seed(hull, 4)
    sync_users(**SUPPRESSING)
    leave(hull, [0, 1])
    with pytest.raises(SyncFailed, match=r"2 people would be removed from Customer.io \(2 deleted and suppressed\)"):
        sync_users(**SUPPRESSING)
    summary = sync_users(**{**SUPPRESSING, "on_segment_exit": "keep"}, approve_deletions=True)
    assert suppressed(cio_sim) == [] and len(cio_sim.people) == 4
    assert summary["deletions"] == {"not deleted: on_segment_exit is no longer suppress": 2}
    assert {r.status for r in planned_rows(sim_env["STATE_DATABASE_URL"])} == {"cancelled"}


@pytest.mark.parametrize("api", ["v1", "v2_batch"])
def test_delete_old_over_the_limit_identifies_the_new_ids_and_deletes_the_old_only_once_approved(
    sim_env, hull, cio_sim, monkeypatch, api
):
    monkeypatch.setenv("MAX_DELETIONS_PER_RUN", "1")
    seed(hull, 4)
    sync_users(**MOVING, customerio_api=api)
    hull.advance(10)
    for n in (1, 2):
        hull.upsert_user({"id": user(n)["id"], "external_id": f"acct-{n}"})
    cio_sim.clear_journal()
    with pytest.raises(SyncFailed, match=r"2 people would be removed from Customer.io \(2 deleted under an old id"):
        sync_users(**MOVING, customerio_api=api)
    # The new persons are there at once; the old ones wait for the approval.
    assert {"acct-1", "acct-2", "u-1", "u-2"} <= set(cio_sim.people)
    assert [a for a, _ in requests(cio_sim)] == ["identify", "identify"]
    rows = planned_rows(sim_env["STATE_DATABASE_URL"])
    assert sorted((r.action, r.cio_id, r.status) for r in rows) == [
        ("delete_old", "u-1", "planned"),
        ("delete_old", "u-2", "planned"),
    ]
    assert state_row(sim_env["STATE_DATABASE_URL"], user(1)["id"]).cio_id == "acct-1"

    summary = sync_users(**MOVING, customerio_api=api, approve_deletions=True)
    assert summary["deletions"] == {"old ids deleted": 2}
    assert "u-1" not in cio_sim.people and "u-2" not in cio_sim.people
    assert {"acct-1", "acct-2", "u-0", "u-3"} <= set(cio_sim.people)
    row = state_row(sim_env["STATE_DATABASE_URL"], user(1)["id"])
    assert row.cio_id == "acct-1" and row.deleted_at is None  # the user lives on under its new id


def test_delete_old_is_not_sent_when_the_old_id_is_held_again(sim_env, hull, cio_sim, monkeypatch):
    monkeypatch.setenv("MAX_DELETIONS_PER_RUN", "0")
    seed(hull, 2)
    sync_users(**MOVING)
    hull.advance(10)
    hull.upsert_user({"id": user(1)["id"], "external_id": "acct-1"})
    with pytest.raises(SyncFailed, match=r"1 people would be removed from Customer.io \(1 deleted under an old id"):
        sync_users(**MOVING)
    hull.advance(10)
    hull.upsert_user({"id": user(1)["id"], "external_id": "u-1"})  # back to the old id before the approval
    # acct-1 is now an old id to delete in turn: over the limit (0), it waits for approval.
    with pytest.raises(SyncFailed, match=r"1 people would be removed from Customer.io \(1 deleted under an old id"):
        sync_users(**MOVING, approve_deletions=True)
    assert "u-1" in cio_sim.people and "u-1" not in cio_sim.deleted
    assert state_row(sim_env["STATE_DATABASE_URL"], user(1)["id"]).cio_id == "u-1"
    rows = {r.cio_id: r for r in planned_rows(sim_env["STATE_DATABASE_URL"])}
    assert rows["u-1"].status == "cancelled" and "held by a live person" in rows["u-1"].last_error
    assert rows["acct-1"].status == "planned" and rows["acct-1"].action == "delete_old"
