"""A rerun of failed batches applies today's settings, never those of the run that saved them,
and says which settings changed since."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cio_sync.store import db
from cio_sync.store.failed import list_failed_batches
from flows.rerun_failed_batches import rerun_failed_batches
from flows.sync_users import SyncFailed, sync_users
from tests.support.builders import hull_user as user

pytestmark = pytest.mark.usefixtures("prefect_harness")

SETTINGS = dict(synchronized_segments=["VIP"], synchronized_attributes=["plan"], enable_user_deletion=True)


def failed_batch_of_two(hull, cio_sim, url) -> dict:
    """Users 1 and 2 exist in Customer.io; their next update fails after retries."""
    for n in range(4):
        hull.upsert_user(user(n))
    sync_users(**SETTINGS)
    hull.advance(10)
    for n in (1, 2):
        hull.set_trait(user(n)["id"], "plan", "silver")
    cio_sim.faults.force("/customers/u-", 503, method="PUT")
    with pytest.raises(SyncFailed, match="failed batch"):
        sync_users(**SETTINGS)
    cio_sim.faults.clear()
    (batch,) = list_failed_batches(db.get_engine(url))
    assert sorted(batch["payload"]["hull_ids"]) == sorted(user(n)["id"] for n in (1, 2))
    assert set(batch["payload"]) == {"hull_ids", "settings_when_saved"}
    return batch


def test_a_rerun_after_deletion_was_turned_off_deletes_nothing(sim_env, hull, cio_sim):
    url = sim_env["STATE_DATABASE_URL"]
    batch = failed_batch_of_two(hull, cio_sim, url)
    hull.advance(10)
    for n in (1, 2):  # they leave every synchronized segment while the batch waits
        hull.set_segments(user(n)["id"], ["s-other"])
    cio_sim.clear_journal()

    result = rerun_failed_batches(**{**SETTINGS, "enable_user_deletion": False})
    assert [r["result"] for r in result["batches"]] == ["resolved"]
    # enable_user_deletion is an alias of on_segment_exit (issue 14): both are named.
    assert result["settings_changed"] == [
        f"batch {batch['id']}: enable_user_deletion: True → False",
        f"batch {batch['id']}: on_segment_exit: 'delete' → 'keep'",
    ]
    assert result["summary"]["skip_reasons"] == {"not_in_segments": 2}
    assert [e for e in cio_sim.journal() if e["method"] == "DELETE"] == []
    with db.get_engine(url).connect() as connection:
        assert list(connection.execute(select(db.planned_deletions))) == []
    sync_users(**{**SETTINGS, "enable_user_deletion": False})  # and the next run has nothing left to send
    assert {"u-1", "u-2"} <= set(cio_sim.people) and not cio_sim.deleted


def test_a_rerun_applies_todays_attributes_and_never_deletes_itself(sim_env, hull, cio_sim, monkeypatch):
    url = sim_env["STATE_DATABASE_URL"]
    failed_batch_of_two(hull, cio_sim, url)
    hull.advance(10)
    hull.set_segments(user(2)["id"], ["s-other"])
    monkeypatch.setenv("SYNCHRONIZED_SEGMENTS", '["VIP"]')  # today's settings from the environment
    monkeypatch.setenv("ENABLE_USER_DELETION", "true")
    monkeypatch.setenv("SYNCHRONIZED_ATTRIBUTES", '["plan", "coconuts"]')
    result = rerun_failed_batches()
    assert result["settings_changed"][0].endswith("synchronized_attributes: ['plan'] → ['plan', 'coconuts']")
    assert cio_sim.people["u-1"]["coconuts"] == 1 and cio_sim.people["u-1"]["plan"] == "silver"
    # user 2 left: the rerun plans the delete, the next sync run's deletion guard sends it
    assert [e for e in cio_sim.journal() if e["method"] == "DELETE"] == []
    assert result["summary"]["decisions"]["delete"] == 1
    sync_users()
    assert [e["path"] for e in cio_sim.journal() if e["method"] == "DELETE"] == ["/api/v1/customers/u-2"]


def test_a_rerun_without_segments_leaves_the_batch_as_it_was_for_the_next_run_to_heal(sim_env, hull, cio_sim):
    """A rerun started without the sync's settings (or after a segment was renamed) cannot redo
    anything; that is the rerun's problem, not the batch's: it keeps its attempts and its
    automatic retries, so the next scheduled run resolves it (the soak found batches that one
    such rerun had taken out of the automatic retry for good)."""
    from flows.rerun_failed_batches import RerunIncomplete

    engine = db.get_engine(sim_env["STATE_DATABASE_URL"])
    before = failed_batch_of_two(hull, cio_sim, sim_env["STATE_DATABASE_URL"])
    for _ in range(3):
        with pytest.raises(RerunIncomplete, match=r"nothing was rerun.*synchronized_segments is empty"):
            rerun_failed_batches()  # no SYNCHRONIZED_SEGMENTS anywhere today
    (batch,) = list_failed_batches(engine)
    assert {k: batch[k] for k in ("attempts", "transient", "error", "status")} == {
        k: before[k] for k in ("attempts", "transient", "error", "status")
    }

    with pytest.raises(RerunIncomplete, match=r"nothing was rerun.*do not exist in Hull"):
        rerun_failed_batches(synchronized_segments=["VIP (renamed)"])
    assert list_failed_batches(engine)[0]["attempts"] == before["attempts"]

    cio_sim.clear_journal()
    summary = sync_users(**SETTINGS)  # the scheduled run's automatic retry heals it
    assert summary["batch_retries"] == {"resolved": 1}
    assert list_failed_batches(engine) == []
    assert {cio_sim.people[f"u-{n}"]["plan"] for n in (1, 2)} == {"silver"}
